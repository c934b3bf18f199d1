"""Notify records on both databases: an event fans out once per recipient and channel (however
often it arrives), problems fail only their own message, quiet hours and digests schedule,
the inbox reads and marks, dead letters are retried."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.notify import store
from services.notify.config import load

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)          # 10:00 in Shanghai
CFG = load(console_url="http://console.test", retry_base_s=1, retry_factor=2, retry_max_delay_s=10, max_attempts=3)
PEOPLE = [
    {"recipient_id": "p-liwei", "site_id": "s1", "name": "李伟", "kind": "resident", "unit_id": "1-1-101",
     "language": "zh-CN", "email": "liwei@demo.local", "phone": "+8613800000001"},
    {"recipient_id": "p-anna", "site_id": "s1", "name": "Anna", "kind": "resident", "unit_id": "1-1-101",
     "language": "en", "email": "anna@@broken", "quiet_start": "22:00", "quiet_end": "07:00"},
    {"recipient_id": "p-wangfang", "site_id": "s1", "name": "王芳", "kind": "staff",
     "roles": ["security", "patrol_supervisor", "cashier"], "language": "zh-CN", "email": "wangfang@demo.local",
     "quiet_start": "00:00", "quiet_end": "23:59"},
    {"recipient_id": "p-zhaolei", "site_id": "s1", "name": "Zhao Lei", "kind": "staff", "roles": ["maintenance"],
     "language": "en", "email": "zhaolei@demo.local", "webhook_url": "http://127.0.0.1:9/hooks/zl",
     "webhook_secret": "s3cret"},
]


@pytest.fixture
def db(migrated):
    engine = migrated("notify")
    with engine.begin() as conn:
        result = store.upsert_recipients(conn, PEOPLE, T0)
    assert result["created"] == 4 and result["replayed"] == 0 and result["warnings"] == ["p-anna: malformed email address 'anna@@broken'"]
    yield engine


def event(**fields):
    return {"v": 1, "event_id": str(uuid.uuid4()), "occurred_at": T0.isoformat(), "site_id": "s1", **fields}


INVOICE = dict(invoice_id="inv-1", number="INV-2026-11-0001", account_id="a-1", unit_id="1-1-101", payer="李伟",
               total_fen=12345, currency="CNY", period="2026-11", due_date="2026-12-15")


def take(db, event_type, payload, at=T0):
    with db.begin() as conn:
        return store.take_event(conn, event_type, payload, CFG, at)


def msgs(db, **filters):
    with db.connect() as conn:
        return store.list_messages(conn, **filters, limit=1000)


def test_an_event_taken_three_times_writes_its_messages_once(db):
    payload = event(**INVOICE)
    first = take(db, "billing.invoice_issued", payload)
    assert [take(db, "billing.invoice_issued", payload)["duplicate"] for _ in range(2)] == [True, True]
    rows = msgs(db, event_id=payload["event_id"])
    assert first["messages"] == len(rows) == 4
    with db.connect() as conn:
        assert store.events_taken(conn) == {"events": 1, "duplicates_ignored": 2}
    # billing SMS is off by default; Anna's broken address fails her email only
    assert sorted((r["recipient_id"], r["channel"], r["status"]) for r in rows) == [
        ("p-anna", "email", "failed"), ("p-anna", "inbox", "delivered"),
        ("p-liwei", "email", "queued"), ("p-liwei", "inbox", "delivered")]
    anna_mail = next(r for r in rows if r["recipient_id"] == "p-anna" and r["channel"] == "email")
    assert anna_mail["last_error"] == "malformed email address 'anna@@broken'"
    with db.connect() as conn:
        box = store.inbox(conn, "p-liwei")
    assert box["unread"] == 1
    assert box["messages"][0]["subject"] == "2026-11 账单 INV-2026-11-0001：123.45 元"
    with db.connect() as conn:
        anna = store.inbox(conn, "p-anna")["messages"][0]
    assert "CNY 123.45, due on 2026-12-15" in anna["body"]


def test_missing_template_variable_and_unknown_recipient_fail_only_their_messages(db):
    broken = event(**{k: v for k, v in INVOICE.items() if k != "due_date"})
    result = take(db, "billing.invoice_issued", broken)
    assert result["messages"] == 4 and all(r["status"] == "failed" for r in msgs(db, event_id=broken["event_id"]))
    assert "'due_date' is undefined" in msgs(db, event_id=broken["event_id"])[0]["last_error"]

    visit = dict(visitor_id="v1", pass_id="pass1", name="Sun Li", host_unit_id="1-1-101", purpose="family visit",
                 gate_id="north-gate", arrived_at=T0.isoformat())
    unknown = event(host_person_id="p-nobody", **visit)
    take(db, "access.visitor_arrived", unknown)
    [row] = msgs(db, event_id=unknown["event_id"])
    assert (row["recipient_id"], row["channel"], row["status"]) == ("p-nobody", "none", "failed")
    assert "unknown recipient 'p-nobody'" in row["last_error"]

    fine = event(host_person_id="p-liwei", **visit)
    take(db, "access.visitor_arrived", fine)
    rows = {r["channel"]: r for r in msgs(db, event_id=fine["event_id"])}
    assert {c: r["status"] for c, r in rows.items()} == {"inbox": "delivered", "email": "queued", "sms": "queued"}
    with db.connect() as conn:
        body = store.message(conn, rows["email"]["message_id"])["body"]
    assert "您的访客Sun Li（family visit）已于 2026-11-27 10:00 从 north-gate 进入" in body

    # a unit's residents when no host person is named; nobody in a unit is a clear failure
    take(db, "access.visitor_arrived", event(host_person_id=None, **visit))
    empty = event(**{**visit, "host_unit_id": "9-9-999"})
    take(db, "access.visitor_arrived", empty)
    [row] = msgs(db, event_id=empty["event_id"])
    assert row["recipient_id"] == "unit:9-9-999" and "no resident of unit" in row["last_error"]


def test_critical_alarms_bypass_quiet_hours_and_others_wait_or_go_to_the_digest(db):
    alarm = dict(gate_id="garage", device_id="t2", state="raised", raised_at=T0.isoformat(), details={})
    forced = event(alarm_id=1, kind="door_forced", **alarm)
    take(db, "access.alarm_raised", forced)
    rows = {(r["recipient_id"], r["channel"]): r for r in msgs(db, event_id=forced["event_id"])}
    # Wang Fang is security and in quiet hours all day: a forced door still goes out now
    assert set(rows) == {("p-wangfang", "inbox"), ("p-wangfang", "email")}
    assert rows[("p-wangfang", "email")]["status"] == "queued"
    assert rows[("p-wangfang", "email")]["next_attempt_at"] == T0.isoformat()

    offline = event(alarm_id=2, kind="device_offline", **alarm)
    take(db, "access.alarm_raised", offline)
    rows = {(r["recipient_id"], r["channel"]): r for r in msgs(db, event_id=offline["event_id"])}
    # security and maintenance; Wang Fang's mail waits for the end of her quiet hours (23:59 local)
    assert rows[("p-wangfang", "email")]["next_attempt_at"] == datetime(2026, 11, 27, 15, 59, tzinfo=UTC).isoformat()
    assert rows[("p-zhaolei", "email")]["next_attempt_at"] == T0.isoformat()
    assert rows[("p-zhaolei", "webhook")]["status"] == "queued"

    cleared = event(alarm_id=2, kind="device_offline", **{**alarm, "state": "cleared"})
    take(db, "access.alarm_cleared", cleared)
    rows = {(r["recipient_id"], r["channel"]): r for r in msgs(db, event_id=cleared["event_id"])}
    assert rows[("p-zhaolei", "email")]["status"] == "held"            # low priority: the daily digest
    assert rows[("p-zhaolei", "inbox")]["status"] == "delivered"
    digest_at = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)              # 08:00 in Shanghai the next day
    assert rows[("p-zhaolei", "email")]["next_attempt_at"] == digest_at.isoformat()
    take(db, "access.alarm_cleared", event(alarm_id=3, kind="device_fault", **{**alarm, "state": "cleared"}))
    with db.begin() as conn:
        assert store.release_digests(conn, digest_at - timedelta(minutes=1), CFG) == 0
        assert store.release_digests(conn, digest_at, CFG) == 2        # Zhao Lei's mail, Wang Fang's mail
    [digest] = [m for m in msgs(db, recipient_id="p-zhaolei", channel="email", status="queued")
                if m["event_type"] == "notify.digest"]
    assert digest["event_type"] == "notify.digest" and digest["subject"] == "Gatehouse daily digest: 2 item(s)"
    assert len(msgs(db, recipient_id="p-zhaolei", status="digested")) == 2


def test_preferences_turn_channels_off_but_a_critical_alarm_still_reaches_the_inbox(db):
    with db.begin() as conn:
        prefs = store.set_preferences(conn, "p-wangfang", [
            {"category": "alarm", "channel": "inbox", "enabled": False},
            {"category": "alarm", "channel": "email", "enabled": False}])
        with pytest.raises(store.InvalidInput, match="channel must be one of"):
            store.set_preferences(conn, "p-wangfang", [{"category": "alarm", "channel": "fax", "enabled": True}])
    assert {(p["category"], p["channel"]): p["enabled"] for p in prefs["preferences"]}[("alarm", "email")] is False
    forced = event(alarm_id=9, kind="door_forced", gate_id="g", device_id="d", state="raised",
                   raised_at=T0.isoformat(), details={})
    take(db, "access.alarm_raised", forced)
    assert [r["channel"] for r in msgs(db, event_id=forced["event_id"])] == ["inbox"]


def test_delivery_outcomes_backoff_dead_letter_and_retry(db):
    payload = event(**INVOICE)
    take(db, "billing.invoice_issued", payload)
    now = T0
    for attempt in range(1, 4):
        with db.begin() as conn:
            [claimed] = store.claim(conn, "email", now, 10, 60)
            assert store.claim(conn, "email", now, 10, 60) == []             # leased
            store.settle(conn, [{"message_id": claimed["message_id"], "attempts": claimed["attempts"],
                                 "outcome": "retry", "answer": "451 try later"}], now, CFG)
        [row] = msgs(db, event_id=payload["event_id"], channel="email", recipient_id="p-liwei")
        if attempt < 3:
            assert row["status"] == "queued" and row["attempts"] == attempt
            delay = datetime.fromisoformat(row["next_attempt_at"]) - now
            assert delay == timedelta(seconds=2 ** (attempt - 1))          # base 1 s, factor 2
            now += delay
    assert row["status"] == "dead" and "gave up after 3 attempts: 451 try later" in row["last_error"]
    inbox_message = msgs(db, channel="inbox")[0]["message_id"]
    with db.begin() as conn:
        with pytest.raises(store.InvalidInput, match="only dead or failed"):
            store.retry(conn, inbox_message, now)
        again = store.retry(conn, row["message_id"], now)
    assert again["status"] == "queued" and again["attempts"] == 0
    assert [a["outcome"] for a in again["attempt_log"]] == ["retry", "retry", "dead", "requeued"]
    with db.begin() as conn:
        [claimed] = store.claim(conn, "email", now, 10, 60)
        store.settle(conn, [{"message_id": claimed["message_id"], "attempts": 0, "outcome": "sent",
                             "answer": "250 OK"}], now, CFG)
    assert msgs(db, status="sent")[0]["provider_answer"] == "250 OK"


def test_inbox_read_marks_and_directory_errors(db):
    take(db, "billing.invoice_issued", event(**INVOICE))
    take(db, "billing.dunning_due", event(account_id="a-1", unit_id="1-1-101", payer="李伟", step=1, days_overdue=15,
                                          outstanding_fen=12345, currency="CNY", oldest_due_date="2026-11-15"))
    with db.begin() as conn:
        box = store.inbox(conn, "p-liwei")
        assert box["unread"] == 2
        store.mark_read(conn, "p-liwei", box["messages"][0]["message_id"], T0)
        with pytest.raises(store.NotFound):
            store.mark_read(conn, "p-anna", box["messages"][1]["message_id"], T0)
        assert store.inbox(conn, "p-liwei", unread_only=True)["unread"] == 1
        assert store.mark_all_read(conn, "p-liwei", T0)["marked"] == 1
        with pytest.raises(store.NotFound):
            store.inbox(conn, "p-nobody")
        with pytest.raises(store.InvalidInput, match="a resident needs a unit_id"):
            store.upsert_recipients(conn, [{"recipient_id": "x", "site_id": "s1", "name": "X"}], T0)
        with pytest.raises(store.InvalidInput, match="language must be one of"):
            store.upsert_recipients(conn, [{**PEOPLE[0], "language": "fr"}], T0)
        updated = store.upsert_recipients(conn, [{**PEOPLE[1], "email": "anna@demo.local"}], T0)
        assert updated == {"created": 0, "updated": 1, "warnings": [], "replayed": 0}
        assert store.recipient(conn, "p-zhaolei")["roles"] == ["maintenance"]
        assert "webhook_secret" not in store.recipient(conn, "p-zhaolei")
        assert [r["recipient_id"] for r in store.list_recipients(conn, "s1", role="cashier")] == ["p-wangfang"]


def test_events_that_found_nobody_reach_recipients_added_later_once(db):
    visit = event(visitor_id="v1", pass_id="pass1", name="Sun Li", host_unit_id="2-1-301", host_person_id=None,
                  purpose=None, gate_id="north-gate", arrived_at=T0.isoformat())
    take(db, "access.visitor_arrived", visit)
    awaited = event(lot_id="lot1", lane_id="out1", session_id="s1", plate="苏E12345", due_fen=700, currency="CNY")
    with db.begin() as conn:
        store.upsert_recipients(conn, [{**PEOPLE[2], "roles": ["security"]}], T0)      # nobody is cashier now
    take(db, "parking.payment_awaited", awaited)
    assert [m["recipient_id"] for m in msgs(db, event_id=awaited["event_id"])] == ["role:cashier"]
    later = T0 + timedelta(minutes=5)
    newcomer = {"recipient_id": "p-chen", "site_id": "s1", "name": "Chen", "kind": "resident", "unit_id": "2-1-301",
                "language": "en", "email": "chen@demo.local"}
    with db.begin() as conn:
        added = store.upsert_recipients(conn, [newcomer, PEOPLE[2]], later, CFG)
        again = store.upsert_recipients(conn, [newcomer, PEOPLE[2]], later, CFG)
    assert added["replayed"] == 2 + 2 and again["replayed"] == 0    # inbox and email each (no SMS for parking)
    assert sorted((m["recipient_id"], m["channel"], m["status"]) for m in msgs(db, event_id=visit["event_id"])) == [
        ("p-chen", "email", "queued"), ("p-chen", "inbox", "delivered"), ("unit:2-1-301", "none", "replayed")]
    assert "replayed at" in msgs(db, status="replayed")[0]["last_error"]
    with db.begin() as conn:                                             # past the window: no replay
        late = store.upsert_recipients(conn, [{**newcomer, "recipient_id": "p-chen2"}],
                                       T0 + timedelta(days=2), CFG)
    assert late["replayed"] == 0


def test_an_alarm_storm_sends_five_then_one_summary_and_the_inbox_keeps_every_alarm(db):
    with db.begin() as conn:
        store.upsert_recipients(conn, [{**PEOPLE[2], "phone": "+8613800000003"}], T0)   # quiet hours all day
    for i in range(8):
        take(db, "access.alarm_raised", event(alarm_id=i, kind="door_forced", gate_id="garage", device_id="t2",
                                              state="raised", raised_at=T0.isoformat(), details={}),
             at=T0 + timedelta(seconds=i))
    sms = sorted(msgs(db, recipient_id="p-wangfang", channel="sms"), key=lambda m: m["created_at"])
    assert [m["status"] for m in sms] == ["queued"] * 5 + ["held"] * 3
    assert len(msgs(db, recipient_id="p-wangfang", channel="inbox")) == 8
    end = T0 + timedelta(seconds=5 + CFG.storm_window_s)
    with db.begin() as conn:
        assert store.release_digests(conn, end - timedelta(seconds=1), CFG) == 0
        assert store.release_digests(conn, end, CFG) == 2                            # sms and email
    [summary] = [m for m in msgs(db, recipient_id="p-wangfang", channel="sms") if m["event_type"] == "notify.digest"]
    assert summary["priority"] == "critical" and summary["status"] == "queued"
    assert summary["next_attempt_at"] == end.isoformat()                              # despite her quiet hours
    assert summary["subject"] == "Gatehouse：另有 3 条同类提醒（汇总）"


def test_a_provider_delivery_receipt_marks_a_sent_sms_delivered(db):
    visit = event(visitor_id="v1", pass_id="p1", name="Sun Li", host_unit_id="1-1-101", host_person_id="p-liwei",
                  purpose=None, gate_id="north-gate", arrived_at=T0.isoformat())
    take(db, "access.visitor_arrived", visit)
    with db.begin() as conn:
        [sms] = store.claim(conn, "sms", T0, 10, 60)
        with pytest.raises(store.InvalidInput, match="only a sent message"):
            store.delivery_report(conn, sms["message_id"], "delivered", "DELIVRD", T0)
        store.settle(conn, [{"message_id": sms["message_id"], "attempts": 0, "outcome": "sent",
                             "answer": "200 accepted"}], T0, CFG)
        done = store.delivery_report(conn, sms["message_id"], "delivered", "DELIVRD", T0 + timedelta(seconds=9))
        with pytest.raises(store.InvalidInput, match="delivered or failed"):
            store.delivery_report(conn, sms["message_id"], "read", None, T0)
    assert done["status"] == "delivered" and done["delivered_at"] == (T0 + timedelta(seconds=9)).isoformat()
    assert [a["outcome"] for a in done["attempt_log"]] == ["sent", "delivered"]


def test_people_registered_at_access_become_recipients_keeping_what_notify_knows(db):
    people = [
        {"person_id": "p-liwei", "name": "Li Wei", "kind": "resident", "unit_id": "1-1-101", "role": None,
         "phone": "+8613900000009", "status": "active"},                # known: email and language stay
        {"person_id": "p-sun", "name": "Sun Qi", "kind": "resident", "unit_id": "1-1-102", "role": None,
         "phone": None, "status": "active"},                            # new: an inbox at least
        {"person_id": "p-guard", "name": "Guard Ma", "kind": "staff", "unit_id": None, "role": "security",
         "phone": "+8613700000007", "status": "active"},
    ]
    for _ in range(2):                          # the same event twice changes nothing more
        with db.begin() as conn:
            store.sync_people(conn, "s1", people, T0, CFG)
    with db.connect() as conn:
        liwei, sun, guard = (store.recipient(conn, r) for r in ("p-liwei", "p-sun", "p-guard"))
    assert liwei["name"] == "Li Wei" and liwei["email"] == "liwei@demo.local" and liwei["phone"] == "+8613800000001"
    assert sun["kind"] == "resident" and sun["unit_id"] == "1-1-102" and sun["language"] == "zh-CN" and sun["active"]
    assert guard["kind"] == "staff" and "security" in guard["roles"] and guard["phone"] == "+8613700000007"
    # the new resident hears of an invoice for their unit, in the inbox
    take(db, "billing.invoice_issued", event(**{**INVOICE, "unit_id": "1-1-102"}))
    assert [m["channel"] for m in msgs(db, recipient_id="p-sun")] == ["inbox"]
    # moved out at access: no more messages
    with db.begin() as conn:
        store.sync_people(conn, "s1", [{**people[1], "status": "moved_out"}], T0, CFG)
    take(db, "billing.invoice_issued", event(**{**INVOICE, "invoice_id": "inv-2", "unit_id": "1-1-102"}))
    assert len(msgs(db, recipient_id="p-sun")) == 1
    with db.begin() as conn, pytest.raises(store.InvalidInput, match="person_id"):
        store.sync_people(conn, "s1", [{"name": "nobody"}], T0, CFG)
