"""Notify with real processes on the real bus (both databases): the same events delivered three
times, once before the service is killed and twice after, reach each recipient once per
channel (the SMTP server and the inbox count them); a provider's failures end as a dead letter
that the console lists and retries."""
from __future__ import annotations

import signal
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime

from gatehouse.bus import ConfirmedPublisher
from services.notify.devservers import FakeProvider, SmtpServer
from tests.stack import free_port, wait_for
from tests.test_gate_access import api, ok

PEOPLE = [
    {"recipient_id": "p-liwei", "site_id": "site1", "name": "李伟", "kind": "resident", "unit_id": "1-1-101",
     "language": "zh-CN", "email": "liwei@demo.local"},
    {"recipient_id": "p-zhangmin", "site_id": "site1", "name": "Zhang Min", "kind": "resident", "unit_id": "1-1-101",
     "language": "en", "email": "zhangmin@demo.local"},
    {"recipient_id": "p-wangfang", "site_id": "site1", "name": "王芳", "kind": "staff", "language": "zh-CN",
     "roles": ["security", "cashier"], "email": "wangfang@demo.local", "phone": "+8613800000003"},
]


def payload(**fields):
    return {"v": 1, "event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC).isoformat(), "site_id": "site1",
            **fields}


def test_redelivered_events_reach_each_recipient_once_and_dead_letters_are_retried(stack, tmp_path):
    smtp = SmtpServer(free_port(), tmp_path / "mail").start()
    provider = FakeProvider(free_port()).start()
    provider.mode = "fail"
    env = {"NOTIFY_SMTP_PORT": str(smtp.port), "NOTIFY_SMS_URL": f"http://127.0.0.1:{provider.port}/sms",
           "NOTIFY_RETRY_BASE_S": "0.2", "NOTIFY_RETRY_MAX_DELAY_S": "0.5", "NOTIFY_MAX_ATTEMPTS": "3",
           "NOTIFY_POLL_S": "0.1"}
    try:
        stack.start_notify(env)
        stack.start("notify-deliver", [sys.executable, "-m", "services.notify.deliver"], env)
        stack.start_console()
        wait_for(lambda: api(stack, "GET", "/api/notify/recipients")[0] == 200, timeout=30, interval=0.5,
                 what="the console reaching notify")
        made = ok(stack, "POST", "/api/notify/recipients", {"recipients": PEOPLE})
        assert made == {"created": 3, "updated": 0, "warnings": [], "replayed": 0}
        code, error = api(stack, "POST", "/api/notify/recipients", {"recipient_id": "x", "site_id": "site1",
                                                                     "name": "X", "language": "fr", "unit_id": "u"})
        assert code == 400 and "language must be one of" in error["error"]

        events = [
            ("access", "alarm_raised", payload(alarm_id=1, gate_id="garage", device_id="t2", kind="door_forced",
                                               state="raised", raised_at=datetime.now(UTC).isoformat(), details={})),
            ("access", "visitor_arrived", payload(visitor_id="v1", pass_id="pass-1", name="Sun Li",
                                                  host_unit_id="1-1-101", host_person_id="p-liwei",
                                                  purpose="family visit", gate_id="north-gate",
                                                  arrived_at=datetime.now(UTC).isoformat())),
            ("billing", "payment_received", payload(payment_id="pay-1", account_id="a-1", unit_id="1-1-101",
                                                    payer="李伟", amount_fen=12345, currency="CNY", method="wechat",
                                                    receipt_number="R-0001", receipt_path="/api/receipts/R-0001.pdf")),
        ]
        publishers = {s: ConfirmedPublisher(stack.amqp_uri, s) for s in ("access", "billing")}

        def publish_all():
            for service, event_type, body in events:
                publishers[service].publish(event_type, body)

        def taken(n):
            with stack.rpc() as rpc:
                return len({m["event_id"] for m in rpc.notify.list_messages(limit=1000)}) >= n
        publish_all()
        wait_for(lambda: taken(3), timeout=30, what="the events taken")
        stack.stop("notify", sig=signal.SIGKILL)                   # a crash; the bus redelivers what it held
        publish_all()
        publish_all()
        stack.start_notify(env)

        # 2 residents x (inbox, email) for the payment; Li Wei x (inbox, email) for the visitor;
        # Wang Fang x (inbox, email, sms) for the forced door
        def all_mail_sent():
            return len(smtp.store.parsed()) >= 4
        wait_for(all_mail_sent, timeout=30, what="four mails")
        with stack.rpc() as rpc:
            wait_for(lambda: rpc.notify.status()["events"] == {"events": 3, "duplicates_ignored": 6}, timeout=20,
                     what="both redeliveries recognised")
            wait_for(lambda: rpc.notify.status()["due_now"].get("email", 0) == 0, timeout=10, what="mail queue empty")
        per_recipient = Counter((m["event"], m["rcpt"][0]) for m in smtp.store.parsed())
        assert len(per_recipient) == 4 and set(per_recipient.values()) == {1}, per_recipient
        box = ok(stack, "GET", "/api/notify/inbox/p-liwei")
        assert box["unread"] == 2 and sorted(m["event_type"] for m in box["messages"]) == [
            "access.visitor_arrived", "billing.payment_received"]
        receipt = next(m for m in box["messages"] if m["event_type"] == "billing.payment_received")
        assert f"http://127.0.0.1:{stack.console_port}/api/receipts/R-0001.pdf" in receipt["body"]
        assert "123.45 元" in receipt["subject"]
        assert len(ok(stack, "GET", "/api/notify/inbox/p-wangfang")["messages"]) == 1
        ok(stack, "POST", f"/api/notify/inbox/p-liwei/{receipt['message_id']}/read")
        assert ok(stack, "GET", "/api/notify/inbox/p-liwei?unread=1")["unread"] == 1
        code, _ = api(stack, "GET", "/api/notify/inbox/p-nobody")
        assert code == 404
        prefs = ok(stack, "POST", "/api/notify/recipients/p-zhangmin/preferences",
                   {"preferences": [{"category": "billing", "channel": "sms", "enabled": True}]})["preferences"]
        assert {"category": "billing", "channel": "sms", "enabled": True, "default": False} in prefs
        quiet = ok(stack, "POST", "/api/notify/recipients/p-zhangmin/quiet-hours", {"start": "22:00", "end": "07:00"})
        assert (quiet["quiet_start"], quiet["quiet_end"]) == ("22:00", "07:00")
        code, error = api(stack, "POST", "/api/notify/recipients/p-zhangmin/quiet-hours", {"start": "25:00",
                                                                                          "end": "07:00"})
        assert code == 400 and "HH:MM" in error["error"]

        # the SMS provider answered 500 to every try: a dead letter after three
        def dead():
            return ok(stack, "GET", "/api/notify/messages?status=dead")
        [letter] = wait_for(dead, timeout=30, what="a dead letter")
        assert letter["channel"] == "sms" and letter["attempts"] == 3 and len(provider.received("/sms")) == 3
        provider.mode = "ok"
        assert ok(stack, "POST", f"/api/notify/messages/{letter['message_id']}/retry")["status"] == "queued"
        wait_for(lambda: ok(stack, "GET", f"/api/notify/messages/{letter['message_id']}")["status"] == "sent",
                 timeout=20, what="the retried SMS sent")
        assert len(provider.received("/sms")) == 4
        code, error = api(stack, "POST", f"/api/notify/messages/{letter['message_id']}/retry")
        assert code == 400 and "only dead or failed" in error["error"]
        with stack.rpc() as rpc:
            assert sum(rpc.notify.status()["messages"]["inbox"].values()) == 4
            states = {c["channel"]: c for c in rpc.notify.status()["channels"]}
        assert states["worker"]["detail"] == f"pid {stack.procs['notify-deliver'].pid}"
        assert states["email"]["state"] == states["sms"]["state"] == "up"
        wait_for(lambda: ok(stack, "GET", "/api/health")["services"]["notify"]["state"] == "up", timeout=10,
                 what="notify's heartbeat on the console's health board")
    finally:
        smtp.stop()
        provider.stop()


def test_people_registered_at_access_reach_notify_and_a_move_out_silences_them(stack):
    stack.start_access()
    stack.start_notify()
    with stack.rpc() as rpc:
        rpc.access.create_site("s9", "Estate nine")
        rpc.access.add_unit("s9", "3-1-501", "3", "1", "501", "98.00")
        rpc.access.add_person("s9", "p-ma", "Ma Lin", "resident", "3-1-501", None, "+8613600000003")

        def synced():
            found = rpc.notify.list_recipients("s9")
            return found[0] if found and found[0]["active"] else None
        ma = wait_for(synced, timeout=20, what="the new resident in notify's directory")
        assert ma["recipient_id"] == "p-ma" and ma["unit_id"] == "3-1-501" and ma["phone"] == "+8613600000003"
        rpc.access.move_out("p-ma", "op-li")
        wait_for(lambda: not rpc.notify.recipient("p-ma")["active"], timeout=20, what="the move-out in notify")
