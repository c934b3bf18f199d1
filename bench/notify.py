"""Notify: 10,000 emails through the real local SMTP server (aiosmtpd, its own process) by the
delivery worker's path (claim from the outbox, SmtpChannel on one kept connection, settle),
against raw smtplib sending the same mails on one connection in the same run; and the
duplicates recipients see when the same events reach the running service three times (once
before it is killed, twice after)."""
from __future__ import annotations

import email
import email.policy
import os
import signal
import smtplib
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench import harness
from tests.stack import free_port, wait_for, wait_port

N = 10_000


def _maildir_count(path: Path) -> int:
    return sum(1 for _ in (path / "new").iterdir()) if (path / "new").exists() else 0


def _devservers(stack, maildir: Path) -> tuple[int, int]:
    smtp_port, sms_port = free_port(), free_port()
    stack.start("devmail", [sys.executable, "-m", "services.notify.devservers", "--smtp-port", str(smtp_port),
                            "--sms-port", str(sms_port), "--maildir", str(maildir)])
    wait_port(smtp_port)
    wait_port(sms_port)
    return smtp_port, sms_port


def _smtp_10k(stack, progress=print) -> dict:
    from gatehouse.db import engine_for
    from services.notify import store
    from services.notify.config import load
    from services.notify.deliver import Deliverer

    maildir = stack.tmp / "mail"
    smtp_port, sms_port = _devservers(stack, maildir)
    cfg = load(smtp_port=smtp_port, sms_url=f"http://127.0.0.1:{sms_port}/sms", batch=1000)
    os.environ.update(stack.db.env())
    if not stack.db.url:
        os.environ.pop("DATABASE_URL", None)
    engine = engine_for("notify")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        store.upsert_recipients(conn, [{"recipient_id": f"r{i:05d}", "site_id": "bench", "name": f"Resident {i}",
                                        "kind": "resident", "unit_id": "1-1-101", "language": "zh-CN" if i % 2 else "en",
                                        "email": f"r{i:05d}@bench.local"} for i in range(N)], now)
    started = time.perf_counter()
    with engine.begin() as conn:
        taken = store.take_event(conn, "billing.invoice_issued", {
            "v": 1, "event_id": str(uuid.uuid4()), "occurred_at": now.isoformat(), "site_id": "bench",
            "invoice_id": "inv-1", "number": "INV-2026-11-0001", "account_id": "a-1", "unit_id": "1-1-101",
            "payer": "Bench", "total_fen": 12345, "currency": "CNY", "period": "2026-11", "due_date": "2026-12-15"},
            cfg, now)
    fan_out_s = time.perf_counter() - started
    assert taken["messages"] == 2 * N, taken        # an inbox message and an email each
    progress(f"    fan-out of one invoice to {N} residents: {fan_out_s:.2f} s ({taken['messages']} messages)")

    worker = Deliverer(engine, cfg)
    started = time.perf_counter()
    worker.drain(["email"])
    wait_for(lambda: _maildir_count(maildir) >= N, timeout=120, interval=0.1, what="10,000 mails in the maildir")
    ours = time.perf_counter() - started
    worker.close()
    with engine.connect() as conn:
        counts = store.counts(conn)["email"]
    assert counts == {"sent": N}, counts
    progress(f"    {N} mails by the delivery worker: {ours:.2f} s")

    # baseline: the same mails (bytes built up front) on one raw smtplib connection
    sample = {"address": "x@bench.local", "subject": "2026-11 账单 INV-2026-11-0001：123.45 元",
              "body": "尊敬的Resident：\n\n房屋 1-1-101 的 2026-11 账单金额 123.45 元，请于 2026-12-15 前缴纳。\n",
              "event_type": "billing.invoice_issued", "event_id": "e", "recipient_id": "r", "language": "zh-CN"}
    from services.notify.channels import SmtpChannel
    builder = SmtpChannel(cfg)
    mails = [(f"r{i:05d}@bench.local", builder._mail({**sample, "message_id": str(uuid.uuid4())})) for i in range(N)]
    started = time.perf_counter()
    conn = smtplib.SMTP("127.0.0.1", smtp_port)
    for rcpt, data in mails:
        conn.sendmail("notify@gatehouse.local", [rcpt], data)
    conn.quit()
    wait_for(lambda: _maildir_count(maildir) >= 2 * N, timeout=120, interval=0.1, what="baseline mails")
    raw = time.perf_counter() - started
    progress(f"    {N} mails by raw smtplib on one connection: {raw:.2f} s")
    engine.dispose()
    stack.stop("devmail")
    return {"notify.smtp_10k_s": round(ours, 2), "notify.smtp_raw_10k_s": round(raw, 2),
            "notify.smtp_ratio_to_raw": round(ours / raw, 2), "notify.fanout_10k_s": round(fan_out_s, 2)}


def _duplicates(stack, events: int = 60, progress=print) -> dict:
    from gatehouse.bus import ConfirmedPublisher

    maildir = stack.tmp / "mail-dup"
    smtp_port, sms_port = _devservers(stack, maildir)
    # storm control off: it would gather the guard's twenty forced-door mails into a summary, and
    # here every (event, recipient, channel) must show up as exactly one mail to count duplicates
    env = {"NOTIFY_SMTP_PORT": str(smtp_port), "NOTIFY_SMS_URL": f"http://127.0.0.1:{sms_port}/sms",
           "NOTIFY_POLL_S": "0.1", "NOTIFY_STORM_LIMIT": "0"}
    stack.start_notify(env)
    stack.start("notify-deliver", [sys.executable, "-m", "services.notify.deliver"], env)
    people = [{"recipient_id": f"p{i}", "site_id": stack.site_id, "name": f"P{i}", "kind": "resident",
               "unit_id": f"u{i % 10}", "language": "en", "email": f"p{i}@bench.local"} for i in range(30)]
    people += [{"recipient_id": "guard", "site_id": stack.site_id, "name": "Guard", "kind": "staff",
                "roles": ["security"], "language": "zh-CN", "email": "guard@bench.local", "phone": "+8613800000000"}]
    with stack.rpc() as rpc:
        rpc.notify.upsert_recipients(people)
    now = datetime.now(UTC).isoformat()
    batch = []
    for i in range(events):
        base = {"v": 1, "event_id": str(uuid.uuid4()), "occurred_at": now, "site_id": stack.site_id}
        if i % 3 == 0:
            batch.append(("access", "alarm_raised", {**base, "alarm_id": i, "gate_id": "g", "device_id": "d",
                                                     "kind": "door_forced", "state": "raised", "raised_at": now,
                                                     "details": {}}))
        else:
            batch.append(("billing", "dunning_due", {**base, "account_id": f"a{i}", "unit_id": f"u{i % 10}",
                                                     "payer": "P", "step": 1, "days_overdue": 10,
                                                     "outstanding_fen": 1000 + i, "currency": "CNY",
                                                     "oldest_due_date": "2026-11-01"}))
    publishers = {s: ConfirmedPublisher(stack.amqp_uri, s) for s in ("access", "billing")}

    def publish():
        for service, event_type, payload in batch:
            publishers[service].publish(event_type, payload)

    def status():
        with stack.rpc() as rpc:
            return rpc.notify.status()
    publish()
    wait_for(lambda: status()["events"]["events"] == events, timeout=60, interval=0.2, what="events taken")
    stack.stop("notify", sig=signal.SIGKILL)
    publish()
    publish()
    stack.start_notify(env)
    wait_for(lambda: status()["events"]["duplicates_ignored"] == 2 * events, timeout=60, interval=0.2,
             what="redeliveries recognised")
    wait_for(lambda: not status()["due_now"], timeout=60, interval=0.2, what="the outbox drained")
    for p in publishers.values():
        p.close()
    mails = Counter()
    for path in (maildir / "new").iterdir():
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        mails[(msg["X-Gatehouse-Event"], msg["To"])] += 1
    inbox = Counter()
    with stack.rpc() as rpc:
        for person in people:
            for m in rpc.notify.inbox(person["recipient_id"], False, 500)["messages"]:
                inbox[(m["event_id"], person["recipient_id"])] += 1
        sms = rpc.notify.list_messages(None, "sms", None, None, 1000)
    duplicates = sum(n - 1 for n in mails.values()) + sum(n - 1 for n in inbox.values())
    progress(f"    {events} events x3 (a crash between): {sum(mails.values())} mails, {sum(inbox.values())} inbox "
             f"items, {len(sms)} SMS, {duplicates} duplicates")
    expected = sum(3 if e[1] == "dunning_due" else 1 for e in batch)    # three residents a unit; one guard
    assert len(mails) == expected, (len(mails), expected)
    return {"notify.duplicates": duplicates, "notify.redelivery_events": events,
            "notify.redelivery_mails": sum(mails.values())}


def bench_notify(progress=print) -> dict:
    out = {}
    with harness.stack() as stack:
        out.update(_smtp_10k(stack, progress))
    with harness.stack() as stack:
        out.update(_duplicates(stack, progress=progress))
    return out


if __name__ == "__main__":
    print(bench_notify())
