"""Patrol records on both databases: scans stored once however often a batch is uploaded,
untrusted device times flagged and never on time, forged codes, unknown tags and unassigned
guards refused with a reason, rounds completed or closed as missed with one alert each,
schedules planned idempotently, hazards through their steps, reports and their files."""
from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from gatehouse import outbox, signing
from services.patrol import reports, store, tables

# three checkpoints ~70 m apart, north-east of the estate's gate
CPS = [
    {"checkpoint_id": "cp-gate", "name": "North gate", "tag_kind": "nfc", "nfc_uid": "04:A1:B2:C3",
     "latitude": 31.8200, "longitude": 117.2200, "radius_m": 25},
    {"checkpoint_id": "cp-garage", "name": "Garage B1", "tag_kind": "qr",
     "latitude": 31.8206, "longitude": 117.2200, "radius_m": 25},
    {"checkpoint_id": "cp-pump", "name": "Pump room", "tag_kind": "nfc", "nfc_uid": "04A1B2C4",
     "latitude": 31.8206, "longitude": 117.2207, "radius_m": 25},
]
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture
def db(migrated):
    engine = migrated("patrol")
    with engine.begin() as conn:
        store.set_guard(conn, "s1", "g1", "Wang Fang", "2468")
        store.set_guard(conn, "s1", "g2", "Zhao Lei", "1357")
        store.set_route(conn, "s1", "r1", "Night route", CPS, ordered=True)
    yield engine


def _now():
    return datetime.now(UTC).replace(microsecond=0)


def _plan(db, start, guard="g1", expected=30, grace=10, round_id=None):
    with db.begin() as conn:
        return store.plan_round(conn, "r1", start.isoformat(), expected, grace, guard, None, round_id)["round_id"]


def _code(db, cp="cp-garage"):
    with db.begin() as conn:
        return store.checkpoint_code(conn, cp)


def scan(tag, at, round_id="", method="nfc", **extra):
    return {"scan_id": str(uuid.uuid4()), "round_id": round_id, "method": method, "tag": tag, "device_time": at,
            "has_location": False, "latitude": 0.0, "longitude": 0.0, "accuracy_m": 0.0, "photo": None, **extra}


def upload(db, scans, guard="g1", received_at=None, sent_at=None, batch_id=None):
    received_at = received_at or _now()
    with db.begin() as conn:
        g = store.guard_for_token(conn, guard, store.guard(conn, guard)["token_epoch"])
        return store.ingest_batch(conn, g, {"batch_id": batch_id or str(uuid.uuid4()), "device_id": "hh-1",
                                            "device_sent_at": sent_at, "scans": scans}, received_at)


def outcomes(answer):
    return [(r.outcome, r.reason) for r in answer["results"]]


def test_a_batch_uploaded_three_times_is_stored_once_and_completes_the_round(db):
    t0 = _now() - timedelta(minutes=20)
    rid = _plan(db, t0)
    batch = [scan("04A1B2C3", t0 + timedelta(minutes=1), rid),
             scan(_code(db), t0 + timedelta(minutes=3), rid, method="qr"),
             scan("04:a1:b2:c4", t0 + timedelta(minutes=5), rid, photo=JPEG)]
    batch_id = str(uuid.uuid4())
    answers = [upload(db, batch, batch_id=batch_id, sent_at=_now() + timedelta(seconds=42)) for _ in range(3)]
    assert outcomes(answers[0]) == [("stored", "")] * 3
    assert outcomes(answers[1]) == outcomes(answers[2]) == [("duplicate", "")] * 3
    assert 41 <= answers[0]["clock_skew_s"] <= 43
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.scans)).scalar() == 3
        batch_row = conn.execute(tables.batches.select()).mappings().one()
        detail = store.round_detail(conn, rid)
    assert batch_row["uploads"] == 3 and 41_000 <= batch_row["clock_skew_ms"] <= 43_000
    assert detail["status"] == "complete" and detail["on_time"] is True
    assert detail["result"]["missing"] == [] and detail["walked_by"] == "g1"
    assert [s["timing"] for s in detail["scans"]] == ["on_time"] * 3 and detail["scans"][2]["has_photo"]


def test_future_and_ancient_device_times_are_stored_flagged_and_never_on_time(db):
    now = _now()
    rid = _plan(db, now - timedelta(minutes=10))
    answer = upload(db, [scan("04A1B2C3", now + timedelta(hours=3), rid),
                         scan(_code(db), now - timedelta(days=800), rid, method="qr"),
                         scan("04A1B2C4", now - timedelta(minutes=5), rid)], received_at=now)
    assert [r.outcome for r in answer["results"]] == ["stored"] * 3
    assert "future_time" in answer["results"][0].flags and "ancient_time" in answer["results"][1].flags
    with db.connect() as conn:
        detail = store.round_detail(conn, rid)
        flagged = {s["scan_id"] for s in store.review_scans(conn, "s1")["flagged"]}
    by_id = {s["scan_id"]: s for s in detail["scans"]}
    for r in answer["results"][:2]:
        assert by_id[r.scan_id]["timing"] == "untrusted" and not by_id[r.scan_id]["counted"]
        assert r.scan_id in flagged
    assert detail["status"] == "in_progress" and detail["result"]["visited"] == ["cp-pump"]
    assert detail["result"]["skipped"] == ["cp-gate", "cp-garage"]


def test_forged_altered_and_unknown_codes_and_unassigned_guards_are_refused_with_reasons(db):
    now = _now()
    rid = _plan(db, now - timedelta(minutes=10))
    genuine = _code(db)
    prefix, kid, payload, sig = genuine.split(".")
    altered_claims = signing.b64encode(signing.b64decode(payload).replace(b"cp-garage", b"cp-pumpxx"))
    kid2, private, _ = signing.new_signing_key()
    forged = signing.sign("GP1", {"site": "s1", "cp": "cp-garage", "v": 1}, kid2, private)
    typed = "GP1.deadbeef.eyJjcCI6ImNwLWdhcmFnZSJ9." + "A" * 86
    answer = upload(db, [scan(f"{prefix}.{kid}.{altered_claims}.{sig}", now, rid, method="qr"),
                         scan(forged, now, rid, method="qr"),
                         scan(typed, now, rid, method="qr"),
                         scan("04FFFFFF", now, rid),
                         scan("not-a-uid", now, rid)])
    assert outcomes(answer) == [("refused", "qr_signature_invalid")] * 3 + [("refused", "unknown_tag")] * 2
    assert "altered or forged" in answer["results"][0].detail
    # g2 is not assigned: refused whether the round is named or not; g1 may walk it
    other = upload(db, [scan("04A1B2C3", now, rid), scan("04A1B2C3", now)], guard="g2")
    assert outcomes(other) == [("refused", "not_assigned")] * 2
    assert "assigned to g1, not to g2" in other["results"][0].detail
    # a reprinted code supersedes the old one
    with db.begin() as conn:
        store.reissue_code(conn, "cp-garage")
    assert outcomes(upload(db, [scan(genuine, now, rid, method="qr")])) == [("refused", "qr_superseded")]
    # refusals are kept for the supervisor, and a repeat is refused again, not stored
    assert outcomes(upload(db, [answer_scan(answer, 3)])) == [("refused", "unknown_tag")]
    with db.connect() as conn:
        refused = store.review_scans(conn, "s1")["refused"]
        assert conn.execute(select(func.count()).select_from(tables.scans)).scalar() == 0
    assert {r["reason"] for r in refused} == {"qr_signature_invalid", "unknown_tag", "not_assigned", "qr_superseded"}


def answer_scan(answer, i):
    return scan("04FFFFFF", _now(), scan_id=answer["results"][i].scan_id)


def test_anomalies_are_flagged_not_refused_and_late_scans_are_accepted_for_review(db):
    t0 = _now() - timedelta(minutes=50)
    rid = _plan(db, t0, expected=30, grace=30)
    far = {"has_location": True, "latitude": 31.8300, "longitude": 117.2200, "accuracy_m": 10.0}
    near = {"has_location": True, "latitude": 31.82061, "longitude": 117.22001, "accuracy_m": 8.0}
    answer = upload(db, [scan("04A1B2C3", t0 + timedelta(minutes=1), rid, **far),
                         scan(_code(db), t0 + timedelta(minutes=1, seconds=5), rid, method="qr", **near),
                         scan("04A1B2C3", t0 + timedelta(minutes=3), rid),
                         scan("04A1B2C4", t0 + timedelta(minutes=40), rid)])
    flags = [set(r.flags) for r in answer["results"]]
    assert [r.outcome for r in answer["results"]] == ["stored"] * 4
    assert flags[0] == {"outside_radius"}                 # 1.1 km away
    assert flags[1] == {"too_fast"}                       # 67 m in 5 s
    assert "repeated_tag" in flags[2]
    assert flags[3] == {"late"}                           # after 30 min, within the grace
    with db.connect() as conn:
        detail = store.round_detail(conn, rid)
    assert detail["status"] == "complete" and detail["on_time"] is False


def test_missed_and_incomplete_rounds_raise_round_missed_once(db):
    now = _now()
    _plan(db, now - timedelta(minutes=50), round_id="missed-1")
    partial = _plan(db, now - timedelta(minutes=45), round_id="partial-1")
    _plan(db, now, round_id="future-1")
    upload(db, [scan("04A1B2C4", now - timedelta(minutes=40), partial),
                scan("04A1B2C3", now - timedelta(minutes=38), partial)])
    with db.begin() as conn:
        events = store.close_due_rounds(conn, now)
    with db.begin() as conn:
        assert store.close_due_rounds(conn, now + timedelta(seconds=5)) == []
    by_round = {e["round_id"]: e for e in events}
    assert set(by_round) == {"missed-1", "partial-1"}
    m, p = by_round["missed-1"], by_round["partial-1"]
    assert m["kind"] == "round" and m["missed_checkpoints"] == ["cp-gate", "cp-garage", "cp-pump"]
    assert m["route_name"] == "Night route" and m["assigned_to"] == "g1" and m["guard_id"] == "g1"
    assert m["supervisor_role"] == "patrol_supervisor"
    assert m["due_by"] == (now - timedelta(minutes=10)).isoformat()
    assert p["kind"] == "checkpoint" and p["missed_checkpoints"] == ["cp-garage"]
    with db.connect() as conn:
        queued = [t for _, t, _ in outbox.unpublished(conn, tables.outbox)]
        statuses = {r["round_id"]: r["status"] for r in store.list_rounds(conn, "s1")}
        partial_detail = store.round_detail(conn, partial)
    assert queued == ["round_missed", "round_missed"]
    assert statuses == {"missed-1": "missed", "partial-1": "incomplete", "future-1": "pending"}
    assert partial_detail["result"]["out_of_order"] == ["cp-gate"]
    # a scan arriving after the round closed is kept, flagged, and changes nothing
    late = upload(db, [scan(_code(db), now - timedelta(minutes=1), partial, method="qr")])
    assert late["results"][0].outcome == "stored" and "after_grace" in late["results"][0].flags
    with db.connect() as conn:
        assert store.round_detail(conn, partial)["status"] == "incomplete"


def test_schedules_plan_rounds_once_and_a_change_replans_the_future(db):
    now = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)       # 10:00 in Shanghai
    spec = {"kind": "interval", "every_minutes": 120, "window_start": "08:00", "window_end": "20:00",
            "expected_minutes": 30, "grace_minutes": 10}
    with db.begin() as conn:
        first = store.set_schedule(conn, "day", "r1", spec, "g1", now=now)
        again = store.generate_rounds(conn, now)
        shanghai = [r["planned_start"] for r in store.list_rounds(conn, "s1", status="pending")]
    # 10:00 .. 18:00 today and 08:00 tomorrow, within 24 hours
    assert first["rounds_planned"] == 6 and again == 0 and len(shanghai) == 6
    with db.begin() as conn:
        store.set_route(conn, "s1", "r1", "Night route", CPS, risk_level="high")
        store.set_schedule(conn, "day", "r1", spec, "g2", now=now)
        pending = store.list_rounds(conn, "s1", status="pending")
        expired = store.list_rounds(conn, "s1", status="expired")
    # high risk halves the interval: hourly rounds, all now g2's; none of the old ones lost
    assert len(pending) == 12 and {r["guard_id"] for r in pending} == {"g2"} and expired == []
    with db.begin() as conn:
        store.set_schedule(conn, "day", "r1", spec, "g2", active=False, now=now)
        assert len(store.list_rounds(conn, "s1", status="expired")) == 12


def test_sign_in_locks_after_wrong_pins_and_a_new_pin_ends_old_tokens(db):
    now = _now()
    with db.begin() as conn:
        g, why = store.sign_in(conn, "g1", "2468", now)
    assert g and not why
    for _ in range(store.LOCK_AFTER_FAILURES):
        with db.begin() as conn:
            assert store.sign_in(conn, "g1", "0000", now)[0] is None
    with db.begin() as conn:
        g, why = store.sign_in(conn, "g1", "2468", now)
        assert g is None and "locked" in why
        assert store.sign_in(conn, "nobody", "2468", now) == (None, "unknown or inactive guard, or wrong PIN")
        epoch = store.guard(conn, "g1")["token_epoch"]
        store.set_guard(conn, "s1", "g1", "Wang Fang", "8642")
        assert store.guard_for_token(conn, "g1", epoch) is None
        assert store.sign_in(conn, "g1", "8642", now)[0]["guard_id"] == "g1"


def test_a_hazard_goes_open_assigned_fixed_verified_with_who_and_when(db):
    now = _now()
    rid = _plan(db, now - timedelta(minutes=5))
    report = {"incident_id": str(uuid.uuid4()), "round_id": rid, "checkpoint_id": "cp-pump", "type": "water_leak",
              "severity": "high", "text": "Water on the floor of the pump room", "photo": JPEG, "device_time": now}
    with db.begin() as conn:
        g = store.guard_for_token(conn, "g1", 1)
        assert store.report_incident(conn, g, report, now)["duplicate"] is False
        assert store.report_incident(conn, g, report, now)["duplicate"] is True
        with pytest.raises(store.NotAssigned):
            store.report_incident(conn, store.guard_for_token(conn, "g2", 1),
                                  {**report, "incident_id": str(uuid.uuid4())}, now)
        with pytest.raises(store.InvalidInput, match="JPEG or PNG"):
            store.report_incident(conn, g, {**report, "incident_id": str(uuid.uuid4()), "photo": b"GIF89a"}, now)
    iid = report["incident_id"]
    with db.begin() as conn:
        with pytest.raises(store.InvalidInput, match="cannot take 'fix'"):
            store.incident_step(conn, iid, "fix", "plumber-li")
        store.incident_step(conn, iid, "assign", "supervisor-chen", "plumber-li")
        store.incident_step(conn, iid, "fix", "plumber-li", note="valve replaced")
        with pytest.raises(store.InvalidInput, match="may not verify"):
            store.incident_step(conn, iid, "verify", "plumber-li")
        store.incident_step(conn, iid, "reject", "supervisor-chen", note="still dripping")
        store.incident_step(conn, iid, "fix", "plumber-li", note="seal replaced too")
        done = store.incident_step(conn, iid, "verify", "supervisor-chen")
        assert store.incident_photo(conn, iid) == (JPEG, "jpeg")
        queued = [p for _, t, p in outbox.unpublished(conn, tables.outbox) if t == "incident_reported"]
    assert done["status"] == "verified" and done["verified_by"] == "supervisor-chen"
    assert [(s["step"], s["status"], s["actor"]) for s in done["steps"]] == [
        ("reported", "open", "g1"), ("assign", "assigned", "supervisor-chen"), ("fix", "fixed", "plumber-li"),
        ("reject", "assigned", "supervisor-chen"), ("fix", "fixed", "plumber-li"),
        ("verify", "verified", "supervisor-chen")]
    assert all(s["at"] for s in done["steps"])
    assert len(queued) == 1 and queued[0]["severity"] == "high" and queued[0]["reported_by"] == "g1"


def test_reports_per_guard_and_route_with_csv_and_xlsx(db):
    now = _now()
    done = _plan(db, now - timedelta(minutes=60), round_id="done")
    _plan(db, now - timedelta(minutes=55), guard="g2", round_id="gone")
    upload(db, [scan("04A1B2C3", now - timedelta(minutes=58), done),
                scan(_code(db), now - timedelta(minutes=55), done, method="qr"),
                scan("04A1B2C4", now - timedelta(minutes=50), done)])
    with db.begin() as conn:
        store.close_due_rounds(conn, now)
        by_guard = store.report(conn, "s1", (now - timedelta(days=1)).isoformat(), now.isoformat(), "guard")
        by_route = store.report(conn, "s1", (now - timedelta(days=1)).isoformat(), now.isoformat(), "route")
    rows = {r["guard"]: r for r in by_guard["rows"]}
    assert rows["g1"]["completion_rate"] == 1.0 and rows["g1"]["on_time_rate"] == 1.0
    assert rows["g2"]["missed"] == 1 and rows["g2"]["completion_rate"] == 0.0 and rows["g2"]["checkpoints_missed"] == 3
    assert by_route["rows"][0]["rounds"] == 2 and by_route["rows"][0]["completion_rate"] == 0.5
    lines = list(csv.reader(io.StringIO(reports.to_csv(by_guard).decode("utf-8-sig"))))
    assert lines[1][:4] == ["guard", "name", "rounds", "complete"] and lines[2][:2] == ["g1", "Wang Fang"]
    sheet = load_workbook(io.BytesIO(reports.to_xlsx(by_route))).active
    assert sheet["A3"].value == "r1" and sheet["H3"].value == 0.5 and sheet["L3"].value == "cp-garage cp-gate cp-pump"


def test_a_round_assigned_to_a_shift_is_walked_by_any_of_its_guards(db):
    now = _now()
    with db.begin() as conn:
        store.set_guard(conn, "s1", "g3", "Sun Qiang", "9753")
        store.set_shift(conn, "s1", "night", "Night shift", ["g1", "g2"])
        rid = store.plan_round(conn, "r1", (now - timedelta(minutes=5)).isoformat(), 30, 10, None, "night")["round_id"]
        assigned = [r["round_id"] for r in store.assignments(conn, "g2", now)["rounds"]]
        assert store.assignments(conn, "g3", now)["rounds"] == []
    assert assigned == [rid]
    assert outcomes(upload(db, [scan("04A1B2C3", now - timedelta(minutes=4))], guard="g2")) == [("stored", "")]
    refused = upload(db, [scan("04A1B2C4", now - timedelta(minutes=3), rid)], guard="g3")
    assert outcomes(refused) == [("refused", "not_assigned")] and "shift night" in refused["results"][0].detail
    with db.connect() as conn:
        detail = store.round_detail(conn, rid)
    assert detail["walked_by"] == "g2" and detail["assigned_to"] == "shift:night" and detail["status"] == "in_progress"


def test_scans_made_in_time_but_synced_after_the_round_was_missed_reconcile_it(db):
    now = _now()
    rid = _plan(db, now - timedelta(minutes=70), round_id="car-park")     # grace ended 30 minutes ago
    with db.begin() as conn:
        assert [e["kind"] for e in store.close_due_rounds(conn, now)] == ["round"]
    walked = [scan("04A1B2C3", now - timedelta(minutes=65), rid), scan(_code(db), now - timedelta(minutes=62), rid,
                                                                       method="qr")]
    first = upload(db, walked[:1])
    assert first["results"][0].outcome == "stored" and "synced_after_close" in first["results"][0].flags
    with db.connect() as conn:
        assert store.round_detail(conn, rid)["status"] == "incomplete"
    upload(db, walked + [scan("04A1B2C4", now - timedelta(minutes=58), rid)])
    with db.connect() as conn:
        detail = store.round_detail(conn, rid)
        events = [(t, p) for _, t, p in outbox.unpublished(conn, tables.outbox)]
        flagged = store.review_scans(conn, "s1")["flagged"]
    assert detail["status"] == "complete" and detail["on_time"] is True
    assert detail["result"]["status_at_close"] == "missed" and detail["result"]["reconciled_at"]
    assert [t for t, _ in events] == ["round_missed", "round_reconciled", "round_reconciled"]
    assert [(p["previous_status"], p["status"], p["missed_checkpoints"]) for t, p in events[1:]] == [
        ("missed", "incomplete", ["cp-garage", "cp-pump"]), ("incomplete", "complete", [])]
    assert len(flagged) == 3 and all("synced_after_close" in s["flags"] for s in flagged)


def test_a_supervisor_accepts_or_rejects_flagged_scans_and_a_rejection_counts(db):
    now = _now()
    closed = _plan(db, now - timedelta(minutes=50), round_id="closed")      # grace ended 10 minutes ago
    open_ = _plan(db, now - timedelta(minutes=10), round_id="open")
    answers = {}
    for rid, t0 in ((closed, now - timedelta(minutes=50)), (open_, now - timedelta(minutes=10))):
        answers[rid] = upload(db, [scan("04A1B2C3", t0 + timedelta(minutes=1), rid),
                                   scan(_code(db), t0 + timedelta(minutes=1, seconds=5), rid, method="qr"),
                                   scan("04A1B2C4", t0 + timedelta(minutes=5), rid)])
        assert answers[rid]["results"][1].flags == ["too_fast"]
    with db.begin() as conn:
        assert store.round_detail(conn, closed)["status"] == store.round_detail(conn, open_)["status"] == "complete"
        fast = [answers[r]["results"][1].scan_id for r in (closed, open_)]
        assert {s["scan_id"] for s in store.review_scans(conn, "s1")["flagged"]} == set(fast)
        store.review_scan(conn, fast[0], "supervisor-chen", "rejected", "5 s for 67 m: not walked", now=now)
        store.review_scan(conn, fast[1], "supervisor-chen", "rejected", now=now)
        with pytest.raises(store.InvalidInput, match="already rejected by supervisor-chen"):
            store.review_scan(conn, fast[1], "supervisor-li", "accepted")
        assert store.review_scans(conn, "s1")["flagged"] == []
        after = {r: store.round_detail(conn, r) for r in (closed, open_)}
        missed = [p for _, t, p in outbox.unpublished(conn, tables.outbox) if t == "round_missed"]
    assert after[closed]["status"] == "incomplete" and after[closed]["result"]["missing"] == ["cp-garage"]
    assert after[open_]["status"] == "in_progress" and after[open_]["on_time"] is None
    assert [(p["round_id"], p["kind"], p["missed_checkpoints"]) for p in missed] == [
        ("closed", "checkpoint", ["cp-garage"])]
    rejected = next(s for s in after[closed]["scans"] if s["scan_id"] == fast[0])
    assert rejected["verdict"] == "rejected" and rejected["reviewed_by"] == "supervisor-chen" and not rejected["counted"]
