"""The delivery worker against real local servers (aiosmtpd, an HTTP provider), on both
databases: an SMTP outage delays mail and loses none; a provider answering 500 or hanging is
retried with backoff, then a dead letter that a retry sends; webhooks arrive signed."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.notify import store
from services.notify.config import load
from services.notify.deliver import Deliverer
from services.notify.devservers import FakeProvider, SmtpServer
from tests.stack import free_port

SITE = "s1"


class Clock:
    def __init__(self):
        self.now = datetime.now(UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def db(migrated):
    engine = migrated("notify")
    yield engine


@pytest.fixture
def servers(tmp_path):
    smtp = SmtpServer(free_port(), tmp_path / "mail").start()
    provider = FakeProvider(free_port(), hook_secrets={"zl": "s3cret"}).start()
    yield smtp, provider
    smtp.stop()
    provider.stop()


def config(smtp, provider, **extra):
    return load(smtp_port=smtp.port, sms_url=f"http://127.0.0.1:{provider.port}/sms", sms_timeout_s=0.5,
                retry_base_s=1, retry_factor=2, retry_max_delay_s=4, max_attempts=3, channel_pause_max_s=0.5,
                console_url="http://console.test", **extra)


def residents(db, n: int, **extra):
    with db.begin() as conn:
        store.upsert_recipients(conn, [{"recipient_id": f"r{i}", "site_id": SITE, "name": f"R{i}", "kind": "resident",
                                        "unit_id": "1-1-101", "language": "en", "email": f"r{i}@demo.local", **extra}
                                       for i in range(n)], datetime.now(UTC))


def invoice(db, cfg, now):
    payload = {"v": 1, "event_id": str(uuid.uuid4()), "occurred_at": now.isoformat(), "site_id": SITE,
               "invoice_id": "inv-1", "number": "INV-1", "account_id": "a-1", "unit_id": "1-1-101", "payer": "R",
               "total_fen": 500, "currency": "CNY", "period": "2026-11", "due_date": "2026-12-15"}
    with db.begin() as conn:
        return store.take_event(conn, "billing.invoice_issued", payload, cfg, now)


def statuses(db, channel):
    with db.connect() as conn:
        return sorted(m["status"] for m in store.list_messages(conn, channel=channel, limit=1000))


def test_smtp_down_then_up_every_mail_goes_out_once_and_none_is_dead(db, servers):
    smtp, provider = servers
    clock = Clock()
    cfg = config(smtp, provider)
    residents(db, 20)
    smtp.stop()                                                   # the mail server is down
    invoice(db, cfg, clock.now)
    worker = Deliverer(db, cfg, clock=clock)
    for _ in range(30):                                           # a long outage, many rounds
        clock.now += timedelta(seconds=5)
        worker.paused_until.clear()
        worker.run_once("email")
    assert statuses(db, "email") == ["queued"] * 20
    with db.connect() as conn:
        [email_state] = [c for c in store.channel_states(conn) if c["channel"] == "email"]
        waiting = store.list_messages(conn, channel="email", limit=1)[0]
    assert email_state["state"] == "down" and "unreachable" in email_state["detail"]
    assert waiting["attempts"] == 0 and waiting["last_error"].startswith("waiting: SMTP")
    with db.begin() as conn:                                      # a week-long outage would end as dead letters
        late = store.claim(conn, "email", clock.now + timedelta(days=2), 1, 60)
        store.settle(conn, [{**{k: late[0][k] for k in ("message_id", "attempts", "created_at")}, "outcome": "wait",
                             "answer": "SMTP unreachable"}], clock.now + timedelta(days=2), cfg)
    assert statuses(db, "email") == ["dead"] + ["queued"] * 19
    smtp.start()                                                  # it is back
    clock.now += timedelta(seconds=5)
    worker.paused_until.clear()
    worker.drain(["email"])
    worker.close()
    assert statuses(db, "email") == ["dead"] + ["sent"] * 19
    received = sorted(m["rcpt"][0] for m in smtp.store.parsed())
    assert len(received) == len(set(received)) == 19
    assert len(list((smtp.store.maildir / "new").iterdir())) == 19
    with db.connect() as conn:
        assert [c["state"] for c in store.channel_states(conn) if c["channel"] == "email"] == ["up"]
        sent = store.list_messages(conn, channel="email", status="sent", limit=1)[0]
    assert sent["provider_answer"].startswith("250 OK queued as")


def test_sms_provider_failing_is_retried_with_backoff_then_dead_then_retried_by_hand(db, servers):
    smtp, provider = servers
    clock = Clock()
    cfg = config(smtp, provider)
    with db.begin() as conn:
        store.upsert_recipients(conn, [{"recipient_id": "g1", "site_id": SITE, "name": "Guard", "kind": "staff",
                                        "roles": ["security"], "language": "zh-CN", "phone": "+8613800000001"}],
                                clock.now)
        store.take_event(conn, "access.alarm_raised", {
            "v": 1, "event_id": "e1", "occurred_at": clock.now.isoformat(), "site_id": SITE, "alarm_id": 7,
            "gate_id": "north", "device_id": "t1", "kind": "door_forced", "state": "raised",
            "raised_at": clock.now.isoformat(), "details": {}}, cfg, clock.now)
    worker = Deliverer(db, cfg, clock=clock)
    provider.mode = "fail"
    assert worker.run_once("sms") == 1
    assert worker.run_once("sms") == 0                             # backoff: not due yet
    clock.now += timedelta(seconds=1)
    provider.mode, provider.hang_s = "hang", 2                    # then it times out (0.5 s)
    assert worker.run_once("sms") == 1
    clock.now += timedelta(seconds=1.5)
    assert worker.run_once("sms") == 0                             # second delay is 2 s
    clock.now += timedelta(seconds=0.5)
    assert worker.run_once("sms") == 1
    with db.connect() as conn:
        [dead] = store.list_messages(conn, status="dead")
        log = store.message(conn, dead["message_id"])["attempt_log"]
    assert [a["outcome"] for a in log] == ["retry", "retry", "dead"]
    assert log[0]["answer"].startswith("500") and "no answer within 0.5 s" in log[1]["answer"]
    assert len(provider.received("/sms")) == 3
    provider.mode = "ok"
    with db.begin() as conn:
        store.retry(conn, dead["message_id"], clock.now)
    assert worker.run_once("sms") == 1
    worker.close()
    with db.connect() as conn:
        sent = store.message(conn, dead["message_id"])
    assert sent["status"] == "sent" and '"status": "accepted"' in sent["provider_answer"]
    request = provider.received("/sms")[-1]
    assert request["headers"]["Authorization"] == f"Bearer {cfg.sms_key}"
    assert json.loads(request["body"])["text"].startswith("【门被强行打开】")     # critical: the subject only


def test_webhooks_are_signed_and_a_bad_address_fails_only_its_message(db, servers):
    smtp, provider = servers
    clock = Clock()
    cfg = config(smtp, provider)
    base = f"http://127.0.0.1:{provider.port}/hooks"
    with db.begin() as conn:
        store.upsert_recipients(conn, [
            {"recipient_id": "zl", "site_id": SITE, "name": "Zhao", "kind": "staff", "roles": ["maintenance"],
             "language": "en", "webhook_url": f"{base}/zl", "webhook_secret": "s3cret", "email": "zl@demo.local"},
            {"recipient_id": "bad", "site_id": SITE, "name": "Bad", "kind": "staff", "roles": ["maintenance"],
             "language": "en", "webhook_url": f"{base}/bad", "webhook_secret": "wrong", "email": "not an address"},
        ], clock.now)
        store.take_event(conn, "access.alarm_raised", {
            "v": 1, "event_id": "e2", "occurred_at": clock.now.isoformat(), "site_id": SITE, "alarm_id": 8,
            "gate_id": "north", "device_id": "t1", "kind": "device_fault", "state": "raised",
            "raised_at": clock.now.isoformat(), "details": {"code": 3}}, cfg, clock.now)
    worker = Deliverer(db, cfg, clock=clock)
    worker.drain()
    worker.close()
    hooks = {r["path"]: r for r in provider.received("/hooks/")}
    assert hooks["/hooks/zl"]["signature_valid"] is True
    assert json.loads(hooks["/hooks/zl"]["body"])["event"]["details"] == {"code": 3}
    assert hooks["/hooks/bad"]["signature_valid"] is False          # signed with another secret: refused
    with db.connect() as conn:
        rows = {(m["recipient_id"], m["channel"]): m for m in store.list_messages(conn, limit=100)}
    assert rows[("zl", "webhook")]["status"] == "delivered"
    assert rows[("bad", "webhook")]["status"] == "failed" and rows[("bad", "webhook")]["last_error"].startswith("401")
    assert rows[("bad", "email")]["status"] == "failed" and "malformed email" in rows[("bad", "email")]["last_error"]
    assert rows[("zl", "email")]["status"] == "sent"
    [mail] = smtp.store.parsed()
    assert mail["rcpt"] == ["zl@demo.local"] and mail["subject"] == "Device fault at north (s1)"
    assert mail["body"].endswith("-- \nGatehouse notifications. Choose what reaches you, and how: "
                                 "http://console.test/api/notify/recipients/zl/preferences\n")


def test_a_provider_failing_every_message_costs_three_attempts_a_round_not_one_per_message(db, servers):
    smtp, provider = servers
    clock = Clock()
    cfg = config(smtp, provider)
    with db.begin() as conn:
        store.upsert_recipients(conn, [{"recipient_id": f"g{i}", "site_id": SITE, "name": "Guard", "kind": "staff",
                                        "roles": ["security"], "language": "en", "phone": f"+86138000000{i:02d}"}
                                       for i in range(6)], clock.now)
        store.take_event(conn, "access.alarm_raised", {
            "v": 1, "event_id": "e3", "occurred_at": clock.now.isoformat(), "site_id": SITE, "alarm_id": 9,
            "gate_id": "north", "device_id": "t1", "kind": "door_held_open", "state": "raised",
            "raised_at": clock.now.isoformat(), "details": {}}, cfg, clock.now)
    provider.mode = "fail"
    worker = Deliverer(db, cfg, clock=clock)
    assert worker.run_once("sms") == 6
    worker.close()
    with db.connect() as conn:
        sms = store.list_messages(conn, channel="sms", limit=10)
        [state] = [c for c in store.channel_states(conn) if c["channel"] == "sms"]
    assert sorted(m["attempts"] for m in sms) == [0, 0, 0, 1, 1, 1] and {m["status"] for m in sms} == {"queued"}
    assert len(provider.received("/sms")) == 3
    assert state["state"] == "down" and state["detail"].startswith("3 failures in a row, last: 500")


def test_two_workers_draining_together_send_each_mail_once(db, servers):
    import threading
    smtp, provider = servers
    cfg = config(smtp, provider, batch=25)
    residents(db, 150)
    invoice(db, cfg, datetime.now(UTC))
    workers = [Deliverer(db, cfg) for _ in range(2)]
    threads = [threading.Thread(target=w.drain, args=(["email"],)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in workers:
        w.close()
    assert statuses(db, "email") == ["sent"] * 150
    received = [m["rcpt"][0] for m in smtp.store.parsed()]
    assert len(received) == len(set(received)) == 150
    assert all(w.channels for w in workers)                        # both took part
