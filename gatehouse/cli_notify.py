"""`gatehouse notify ...`: inboxes, messages and dead letters, the recipient directory, and the
mail the local dev SMTP server kept (wired into gatehouse.cli)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from urllib.parse import quote, urlencode

import click


@click.group("notify")
def notify():
    """Notifications: inboxes, delivery status, dead letters, recipients."""


@notify.command("inbox")
@click.argument("recipient_id")
@click.option("--unread", is_flag=True, help="Only unread messages.")
@click.option("--limit", default=20, show_default=True)
def inbox(recipient_id, unread, limit):
    """A recipient's in-app inbox, newest first."""
    from gatehouse.cli import _console
    box = _console("GET", f"/api/notify/inbox/{quote(recipient_id)}?{urlencode({'unread': int(unread), 'limit': limit})}")
    click.echo(f"{recipient_id}: {box['unread']} unread")
    for m in box["messages"]:
        click.echo(f"  {'  ' if m['read_at'] else '* '}{m['created_at'][:19]}  {m['subject']}  [{m['message_id']}]")


@notify.command("read")
@click.argument("recipient_id")
@click.argument("message_id")
def read(recipient_id, message_id):
    """Mark an inbox message read (MESSAGE_ID `all`: every one)."""
    from gatehouse.cli import _console, _print
    _print(_console("POST", f"/api/notify/inbox/{quote(recipient_id)}/{quote(message_id)}/read", {}))


@notify.command("messages")
@click.option("--status", help="queued, sending, sent, delivered, failed, dead, held, digested")
@click.option("--channel", help="inbox, email, sms, webhook")
@click.option("--recipient", "recipient_id")
@click.option("--event", "event_id")
@click.option("--limit", default=50, show_default=True)
def messages(status, channel, recipient_id, event_id, limit):
    """Messages and their delivery status (dead letters: --status dead)."""
    from gatehouse.cli import _console
    query = {k: v for k, v in (("status", status), ("channel", channel), ("recipient_id", recipient_id),
                               ("event_id", event_id), ("limit", limit)) if v}
    for m in _console("GET", f"/api/notify/messages?{urlencode(query)}"):
        why = m.get("last_error") or m.get("provider_answer") or ""
        click.echo(f"{m['message_id']}  {m['status']:<9} {m['channel']:<7} {m['recipient_id']:<14} "
                   f"{m['event_type']:<26} tries {m['attempts']}  {why[:80]}")


@notify.command("show")
@click.argument("message_id")
def show(message_id):
    """One message with its text and every attempt."""
    from gatehouse.cli import _console, _print
    _print(_console("GET", f"/api/notify/messages/{quote(message_id)}"))


@notify.command("retry")
@click.argument("message_id")
def retry(message_id):
    """Send a dead or failed message again."""
    from gatehouse.cli import _console, _print
    _print(_console("POST", f"/api/notify/messages/{quote(message_id)}/retry", {}))


@notify.command("status")
def status():
    """Messages per channel and status; channels the delivery worker sees down."""
    from gatehouse.cli import _console, _print
    _print(_console("GET", "/api/notify/status"))


@notify.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_recipients(path):
    """Create or update recipients from JSON (a list) or CSV (a header row of the field names;
    roles separated by `;`). All or none."""
    from gatehouse.cli import _console, _print
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
        for row in rows:
            if "roles" in row:
                row["roles"] = [r for r in row["roles"].split(";") if r]
            if "active" in row:
                row["active"] = row["active"].lower() in ("1", "true", "yes")
    else:
        rows = json.loads(path.read_text(encoding="utf-8"))
    _print(_console("POST", "/api/notify/recipients", {"recipients": rows}))


@notify.command("mail")
@click.option("--maildir", default="var/mail", show_default=True, type=click.Path(path_type=Path))
@click.option("--last", default=10, show_default=True)
@click.option("--body", is_flag=True, help="Print each mail's text too.")
def mail(maildir, last, body):
    """The newest mails the local dev SMTP server kept (make run: var/mail)."""
    import email
    import email.policy
    files = sorted((maildir / "new").glob("*"), key=lambda p: p.stat().st_mtime)[-last:] if (maildir / "new").exists() \
        else []
    click.echo(f"{len(list((maildir / 'new').glob('*'))) if files else 0} mails in {maildir}")
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        click.echo(f"  {msg['Date']}  to {msg['To']}: {msg['Subject']}")
        if body:
            click.echo("    " + msg.get_content().strip().replace("\n", "\n    "))
