"""`gatehouse billing ...`: billing runs with a progress bar (resumable), accounts, arrears,
counter payments, the late-fee and dunning jobs, the ledger check, exports and receipts
(wired into gatehouse.cli). Amounts are in yuan ("123.45")."""
from __future__ import annotations

import base64
import sys
import uuid
from datetime import date
from pathlib import Path

import click


def _yuan(fen: int) -> str:
    from services.billing.rules import yuan
    return yuan(fen)


@click.group("billing")
def billing():
    """Billing: runs, accounts, arrears, payments, late fees, reminders, the ledger."""


@billing.command("run")
@click.option("--site", required=True)
@click.option("--period", required=True, help="2026-11 (monthly), 2026-Q4 (quarterly) or 2026 (yearly).")
@click.option("--cycle", default="monthly", type=click.Choice(["monthly", "quarterly", "yearly"]), show_default=True)
@click.option("--again", is_flag=True, help="A fresh pass over a finished period (bills only what is missing).")
@click.option("--chunk", default=2000, show_default=True, help="Accounts a transaction.")
@click.option("--draft", is_flag=True, help="Leave the invoices as drafts for review (then `billing issue`).")
def run(site, period, cycle, again, chunk, draft):
    """Bill every account of a site for a period, with a progress bar. Killed half way? Run the
    same command again: it continues from the last committed chunk, and no line is billed twice."""
    from tqdm import tqdm

    from gatehouse.cli import _rpc
    with _rpc() as rpc:
        state = rpc.billing.start_run(site, period, cycle, again, not draft)
        if state["status"] == "done":
            click.echo(f"{site} {period} is already billed: run {state['run_id']} (attempt {state['attempt']}) made "
                       f"{state['invoices_created']} invoices, {state['lines_created']} lines; --again runs it again, "
                       f"adding only what is missing")
            return
        if state["done"]:
            click.echo(f"resuming run {state['run_id']} at {state['done']} of {state['total']} accounts", err=True)
        with tqdm(total=state["total"], initial=state["done"], unit="acct", file=sys.stderr,
                  desc=f"billing {site} {period}") as bar:
            while state["status"] != "done":
                state = rpc.billing.run_step(state["run_id"], 1, chunk)
                bar.update(state["done"] - bar.n)
    click.echo(f"run {state['run_id']} (attempt {state['attempt']}): {state['invoices_created']} invoices, "
               f"{state['lines_created']} lines created; {state['done']} accounts visited")


@billing.command("issue")
@click.option("--site", required=True)
@click.option("--period", required=True)
def issue(site, period):
    """Issue a period's draft invoices (numbers, journal, invoice_issued events), with a progress bar."""
    from tqdm import tqdm

    from gatehouse.cli import _rpc
    with _rpc() as rpc:
        step = rpc.billing.issue_drafts(site, period, 0)
        with tqdm(total=step["left"], unit="inv", file=sys.stderr, desc=f"issuing {site} {period}") as bar:
            while step["left"]:
                step = rpc.billing.issue_drafts(site, period, 500)
                bar.update(step["issued"])
    click.echo(f"{bar.n} invoices issued")


@billing.command("accounts")
@click.option("--site", required=True)
@click.option("--limit", default=50, show_default=True)
def accounts(site, limit):
    """Accounts with what they owe and their prepaid credit."""
    from gatehouse.cli import _rpc
    with _rpc() as rpc:
        rows = rpc.billing.list_accounts(site, limit)
    click.echo(f"{'id':>6}  {'unit':<10} {'payer':<16} {'area m2':>8} {'owes':>10} {'prepaid':>10}")
    for a in rows:
        click.echo(f"{a['account_id']:>6}  {a['unit_id']:<10} {a['payer'][:16]:<16} {a['area_m2']:>8} "
                   f"{_yuan(a['receivable_fen']):>10} {_yuan(a['prepaid_fen']):>10}")


@billing.command("arrears")
@click.option("--site", required=True)
@click.option("--as-of", default=None, help="Date (default today).")
@click.option("--limit", default=30, show_default=True)
def arrears(site, as_of, limit):
    """Who owes what since when: aging buckets per building and the owing accounts, oldest first."""
    from gatehouse.cli import _rpc
    from services.billing.rules import AGING_BUCKETS
    with _rpc() as rpc:
        r = rpc.billing.arrears(site, as_of or date.today().isoformat(), limit)
    head = "".join(f"{b:>11}" for b in AGING_BUCKETS)
    click.echo(f"arrears at {site} as of {r['as_of']} ({r['currency']})")
    click.echo(f"{'':<12}{head}{'total':>11}")
    for name, b in [("site", r["site"])] + [(f"building {k}", v) for k, v in r["buildings"].items()]:
        click.echo(f"{name:<12}" + "".join(f"{_yuan(b[k]):>11}" for k in AGING_BUCKETS) + f"{_yuan(b['total']):>11}")
    click.echo(f"\n{r['accounts_owing']} accounts owing; not yet due: {_yuan(r['site']['not_due'])}")
    for a in r["accounts"]:
        click.echo(f"  {a['unit_id']:<10} {a['payer'][:16]:<16} {_yuan(a['overdue_fen']):>10}  since "
                   f"{a['oldest_due_date']} ({a['days_overdue']} days)")


@billing.command("pay")
@click.argument("unit_id")
@click.option("--site", required=True)
@click.option("--amount", required=True, help="Yuan, e.g. 123.45")
@click.option("--method", default="cash", type=click.Choice(["cash", "card", "bank"]), show_default=True)
@click.option("--by", "operator", default="counter", show_default=True)
@click.option("--key", default=None, help="Idempotency key (default: a new one; give the same to retry safely).")
@click.option("--reference", default="", help="Bank reference.")
def pay(unit_id, site, amount, method, operator, key, reference):
    """A counter payment for a unit, allocated to the oldest debts first; prints the receipt."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        acct = rpc.billing.account_by_unit(site, unit_id)
        result = rpc.billing.pay(acct["account_id"], key or f"cli-{uuid.uuid4()}", method, amount, "CNY", None,
                                 operator, reference)
    _print(result)


@billing.command("late-fees")
@click.option("--site", required=True)
@click.option("--as-of", default=None, help="Date (default today). Running twice for a day charges once.")
def late_fees(site, as_of):
    """Accrue late fees (滞纳金) up to a day."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        _print(rpc.billing.accrue_late_fees(site, as_of or date.today().isoformat()))


@billing.command("dunning")
@click.option("--site", required=True)
@click.option("--as-of", default=None, help="Date (default today).")
def dunning(site, as_of):
    """Send the reminders that are due (billing.dunning_due events; once per invoice and step)."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        _print(rpc.billing.run_dunning(site, as_of or date.today().isoformat()))


@billing.command("verify")
@click.option("--site", default=None)
def verify(site):
    """Prove the books: balanced transactions, every account's balance equal to its entries."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        result = rpc.billing.verify_ledger(site)
    _print(result)
    if not result["ok"]:
        raise click.ClickException("the ledger does not verify")


@billing.command("export")
@click.argument("kind", type=click.Choice(["invoices", "payments", "arrears"]))
@click.option("--site", required=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None)
@click.option("--as-of", default=None)
def export(kind, site, out, as_of):
    """Export invoices, payments or arrears to XLSX."""
    from gatehouse.cli import _rpc
    with _rpc() as rpc:
        data = base64.b64decode(rpc.billing.export_xlsx_b64(site, kind, as_of))
    path = Path(out or f"{site}-{kind}.xlsx")
    path.write_bytes(data)
    click.echo(f"{path} ({len(data)} bytes)")


@billing.command("receipt")
@click.argument("number")
@click.option("--pdf", "as_pdf", is_flag=True, help="Write the PDF instead of printing the HTML.")
def receipt(number, as_pdf):
    """A receipt by number: HTML to stdout, or NUMBER.pdf."""
    from gatehouse.cli import _rpc
    with _rpc() as rpc:
        if as_pdf:
            Path(f"{number}.pdf").write_bytes(base64.b64decode(rpc.billing.receipt_pdf_b64(number)))
            click.echo(f"{number}.pdf")
        else:
            click.echo(rpc.billing.receipt_html(number))
