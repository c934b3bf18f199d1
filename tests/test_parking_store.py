"""Parking records on both databases: one session per stay, fees from the tariff, payments
counted once, lane events ingested once, low-confidence reads queued for an operator."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gatehouse import outbox
from services.parking import store, tables
from services.parking.service import ingest

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)          # 10:00 in Shanghai
TARIFF = {"free_minutes": 15, "first_period_minutes": 60, "first_period_fen": 500, "increment_minutes": 30,
          "increment_fen": 200, "night_start": "", "daily_cap_fen": 3000, "cap_24h_fen": 0}


@pytest.fixture
def db(migrated):
    engine = migrated("parking")
    with engine.begin() as conn:
        store.set_lot(conn, "s1", "lot1", "Garage", "Asia/Shanghai", 2, TARIFF)
        store.add_lane(conn, "lot1", "in1", "Entry", "entry")
        store.add_lane(conn, "lot1", "out1", "Exit", "exit", {"no_entry_record_exit": "charge_flat",
                                                             "no_entry_record_fee_fen": 2000})
        store.register_vehicle(conn, "lot1", "皖A12345", "resident", "1-1-101")
        store.register_vehicle(conn, "lot1", "皖B88888", "resident", "1-1-102", fixed_space=True)
        store.register_vehicle(conn, "lot1", "沪C00001", "blacklist", "security")
    yield engine


def _id():
    return str(uuid.uuid4())


def test_a_visitor_stay_is_priced_and_closed_once(db):
    with db.begin() as conn:
        entry = store.record_entry(conn, "lot1", "in1", "苏E·9K123", _id(), T0)
        again = store.record_entry(conn, "lot1", "in1", "苏E9K123", _id(), T0 + timedelta(seconds=3))
    assert not entry["duplicate"] and again["duplicate"] and again["session_id"] == entry["session_id"]
    exit_id = _id()
    with db.begin() as conn:
        closed = store.record_exit(conn, "lot1", "out1", "苏E9K123", exit_id, T0 + timedelta(minutes=61))
        redelivered = store.record_exit(conn, "lot1", "out1", "苏E9K123", exit_id, T0 + timedelta(minutes=61))
    assert closed["fee_fen"] == 500 + 200 and closed["due_fen"] == 700 and closed["status"] == "closed"
    assert redelivered["session_id"] == closed["session_id"]
    with db.connect() as conn:
        events = [e for e in outbox.unpublished(conn, tables.outbox) if e[1] != "site_data_changed"]
        assert [t for _, t, _ in events] == ["session_closed"]
        assert events[0][2]["fee_fen"] == 700 and events[0][2]["currency"] == "CNY"
        assert store.occupancy(conn, "lot1")["inside"] == 0


def test_residents_pay_nothing_and_fixed_spaces_take_no_shared_space(db):
    with db.begin() as conn:
        store.record_entry(conn, "lot1", "in1", "皖A12345", _id(), T0)
        store.record_entry(conn, "lot1", "in1", "皖B88888", _id(), T0)
        assert store.occupancy(conn, "lot1") == {"inside": 2, "shared_occupied": 1}
        closed = store.record_exit(conn, "lot1", "out1", "皖A12345", _id(), T0 + timedelta(hours=5))
    assert closed["fee_fen"] == 0 and closed["kind"] == "resident"


def test_a_misread_province_still_finds_the_open_session(db):
    with db.begin() as conn:
        entry = store.record_entry(conn, "lot1", "in1", "苏E9K123", _id(), T0)
        closed = store.record_exit(conn, "lot1", "out1", "皖E9K123", _id(), T0 + timedelta(minutes=10))
    assert closed["session_id"] == entry["session_id"] and closed["fee_fen"] == 0     # within free minutes


def test_exit_without_entry_follows_the_lane_policy_and_long_stays_are_capped(db):
    with db.begin() as conn:
        orphan = store.record_exit(conn, "lot1", "out1", "浙A11111", _id(), T0)
        store.record_entry(conn, "lot1", "in1", "浙B22222", _id(), T0)
        long_stay = store.record_exit(conn, "lot1", "out1", "浙B22222", _id(), T0 + timedelta(days=4))
    assert orphan["fee_fen"] == 2000 and "no_entry_record" in orphan["flags"]
    assert "long_stay" in long_stay["flags"]
    assert long_stay["fee_fen"] <= 3000 * 5            # the daily cap over the five local days touched


def test_a_payment_is_counted_once_and_opens_an_exit_window(db):
    with db.begin() as conn:
        entry = store.record_entry(conn, "lot1", "in1", "苏E9K123", _id(), datetime.now(UTC) - timedelta(hours=2))
    with db.connect() as conn:
        due = store.quote(conn, entry["session_id"])["due_fen"]
    assert due > 0
    for _ in range(3):                                  # the cashier's terminal retries
        with db.begin() as conn:
            paid = store.record_payment(conn, entry["session_id"], "pay-001", due, "cash", "cashier-1")
    assert paid["paid_fen"] == due and len(paid["payments"]) == 1 and paid["paid_until"]
    with pytest.raises(store.InvalidInput, match="already recorded"):
        with db.begin() as conn:
            store.record_payment(conn, entry["session_id"], "pay-001", due + 1, "cash", "cashier-1")
    with db.begin() as conn:
        closed = store.record_exit(conn, "lot1", "out1", "苏E9K123", _id(), datetime.now(UTC))
    assert closed["due_fen"] == 0 and closed["fee_fen"] == due
    with db.connect() as conn:
        kinds = [t for _, t, _ in outbox.unpublished(conn, tables.outbox) if t != "site_data_changed"]
    assert kinds == ["exit_cleared", "session_closed"]


def test_lots_lanes_and_vehicles_are_queued_for_the_lanes(db):
    with db.connect() as conn:
        items = [i for _, t, p in outbox.unpublished(conn, tables.outbox) if t == "site_data_changed" for i in p["items"]]
    assert [i["type"] for i in items] == ["lot", "lane", "lane", "vehicle", "vehicle", "vehicle"]
    assert {i["plate"]: i["kind"] for i in items if i["type"] == "vehicle"}["沪C00001"] == "blacklist"
    with db.begin() as conn:
        assert store.record_snapshot(conn, "s1") == 6


def test_bad_input_is_refused_and_writes_nothing(db):
    for call, message in (
            (lambda c: store.register_vehicle(c, "lot1", "not a plate!!", "resident", "x"), "plate"),
            (lambda c: store.register_vehicle(c, "lot1", "皖A54321", "monthly", "x"), "valid_from"),
            (lambda c: store.register_vehicle(c, "lot1", "皖A54321", "spaceship", "x"), "kind"),
            (lambda c: store.set_lot(c, "s1", "lot2", "X", "Mars/Base", 1, TARIFF), "time zone"),
            (lambda c: store.set_lot(c, "s1", "lot2", "X", "UTC", 1, {"free_minute": 1}), "unknown field"),
            (lambda c: store.add_lane(c, "lot1", "x", "X", "sideways"), "direction"),
            (lambda c: store.record_payment(c, "nope", "p1", 100, "cash", "me"), "unknown session"),
            (lambda c: store.record_payment(c, "nope", "p1", 0, "cash", "me"), "amount_fen")):
        with pytest.raises(store.InvalidInput, match=message):
            with db.begin() as conn:
                call(conn)
    with db.connect() as conn:
        assert len(store.list_vehicles(conn, "lot1")) == 3


def test_lane_events_from_the_edge_are_ingested_once_and_reads_queued(db):
    enter, leave, unsure = _id(), _id(), _id()

    def event(event_id, kind, minutes, **attributes):
        return {"event_id": event_id, "device_id": "cam1", "gate_id": "in1", "kind": kind, "offline": False,
                "device_time": (T0 + timedelta(minutes=minutes)).isoformat(),
                "attributes": {"lot_id": "lot1", **attributes}}
    batch = {"site_id": "s1", "events": [
        event(enter, "vehicle_entered", 0, lane_id="in1", plate="粤B12345"),
        event(_id(), "access_granted", 1),
        event(unsure, "plate_unconfirmed", 2, lane_id="in1", plate="粤B1Z345", confidence="0.41",
              crop_jpeg_b64="/9j/4AAQ"),
        event(leave, "vehicle_exited", 90, lane_id="out1", plate="粤B12345")]}
    for _ in range(2):                                   # redelivered by the broker
        with db.begin() as conn:
            assert ingest(conn, batch) == 3
    with db.connect() as conn:
        sessions = store.list_sessions(conn, "lot1")
        reads = store.pending_reads(conn, "lot1")
        assert store.read_crop(conn, unsure) == b"\xff\xd8\xff\xe0\x00\x10"
    assert len(sessions) == 1 and sessions[0]["fee_fen"] == 500 + 200
    assert [(r["plate_read"], r["confidence"]) for r in reads] == [("粤B1Z345", 0.41)]
    with db.begin() as conn:
        decided = store.decide_read(conn, unsure, "op-li", "粤B12345")
    assert decided["status"] == "confirmed" and decided["confirmed_plate"] == "粤B12345"
    with pytest.raises(store.InvalidInput, match="already confirmed"):
        with db.begin() as conn:
            store.decide_read(conn, unsure, "op-wang", None)


def test_a_car_waiting_to_pay_tells_the_cashiers_once_per_stay(db):
    with db.begin() as conn:
        stay = store.record_entry(conn, "lot1", "in1", "苏E9K123", _id(), T0)
    waited = _id()
    with db.begin() as conn:       # the camera reads the waiting car three times; one batch is redelivered
        first = store.record_exit_waiting(conn, "lot1", "out1", "苏E9K123", waited, T0 + timedelta(minutes=61), 700)
        assert store.record_exit_waiting(conn, "lot1", "out1", "苏E9K123", waited, T0 + timedelta(minutes=61), 700) is None
        assert store.record_exit_waiting(conn, "lot1", "out1", "苏E9K123", _id(), T0 + timedelta(minutes=62), 700) is None
        orphan = store.record_exit_waiting(conn, "lot1", "out1", "粤B54321", _id(), T0, 2000)
    assert first == {"session_id": stay["session_id"], "due_fen": 700}
    with db.connect() as conn:
        awaited = [p for _, t, p in outbox.unpublished(conn, tables.outbox) if t == "payment_awaited"]
    assert [(p["plate"], p["due_fen"], p["lane_id"]) for p in awaited] == [("苏E9K123", 700, "out1"),
                                                                         ("粤B54321", 2000, "out1")]
    assert awaited[0]["event_id"] == waited and awaited[1]["session_id"] == orphan["session_id"]
    # the car without an entry record pays and leaves: its stay is the one opened while it waited
    with db.begin() as conn:
        store.record_payment(conn, orphan["session_id"], "cash-9", 2000, "cash", "cashier-1")
        closed = store.record_exit(conn, "lot1", "out1", "粤B54321", _id(), T0 + timedelta(minutes=1))
    assert closed["session_id"] == orphan["session_id"] and "no_entry_record" in closed["flags"]
    assert closed["fee_fen"] == 2000 and closed["due_fen"] == 0
