"""The access and edgelink storage on both databases: idempotent ingest, views, projection."""
import uuid
from datetime import UTC, datetime

import pytest

from gatehouse.db import engine_for
from services.access import store
from services.edgelink.projection import Projection


@pytest.fixture
def access_engine(migrated):
    migrated("edgelink")
    engine = migrated("access")
    yield engine


def _batch(events, site="s1"):
    return {"site_id": site, "agent_id": "a1", "received_at": datetime.now(UTC).isoformat(), "events": events}


def _event(seq, device="t1", kind="access_granted"):
    return {"event_id": str(uuid.uuid4()), "device_id": device, "gate_id": "north", "kind": kind,
            "device_seq": seq, "device_time": datetime.now(UTC).isoformat(), "offline": False,
            "attributes": {"card_number": "1001", "reason": "granted"}}


def test_ingest_stores_each_event_once(access_engine):
    events = [_event(i) for i in range(1, 101)]
    with access_engine.begin() as conn:
        assert len(store.store_edge_events(conn, _batch(events[:60]))) == 60
    with access_engine.begin() as conn:   # a redelivered, overlapping batch
        new = store.store_edge_events(conn, _batch(events[40:]))
    assert [r["event_id"] for r in new] == [e["event_id"] for e in events[60:]]
    with access_engine.connect() as conn:
        assert store.count_events(conn, "s1") == 100
        page = store.list_events(conn, "s1", limit=30)
        assert [e["device_seq"] for e in page["events"]] == list(range(100, 70, -1))
        page2 = store.list_events(conn, "s1", limit=30, before=page["next_before"])
        assert page2["events"][0]["device_seq"] == 70
        assert page["events"][0]["device_time"].endswith("+00:00")
        assert page["events"][0]["device_time_local"] == page["events"][0]["device_time"]   # no such site: UTC
        store.create_site(conn, "s1", "Site", "Asia/Shanghai")
        shown = store.list_events(conn, "s1", limit=1)["events"][0]
        assert shown["device_time_local"].endswith("+08:00")
        assert datetime.fromisoformat(shown["device_time_local"]) == datetime.fromisoformat(shown["device_time"])


def test_bad_input_writes_nothing(access_engine):
    with access_engine.begin() as conn:
        store.create_site(conn, "s1", "Site", "Asia/Shanghai")
    with pytest.raises(store.InvalidInput, match="time zone"):
        with access_engine.begin() as conn:
            store.create_site(conn, "s2", "Site", "Mars/Olympus")
    with pytest.raises(store.NotFound, match="unknown gate"):
        with access_engine.begin() as conn:
            store.create_group(conn, "s1", "g1", "Group", ["nowhere"])
    with access_engine.begin() as conn:
        store.add_gate(conn, "s1", "north", "North")
        store.create_group(conn, "s1", "g1", "Group", ["north"])
        store.add_unit(conn, "s1", "1-1-101", "1", "1", "101")
        store.add_person(conn, "s1", "ann", "Ann", "resident", "1-1-101")
        store.add_to_group(conn, "g1", "ann")
    with pytest.raises(store.InvalidInput, match="belongs to site 's1'"):
        with access_engine.begin() as conn:
            store.create_site(conn, "s2", "Other", "UTC")
            store.create_group(conn, "s2", "g1", "Taken", [])
    with pytest.raises(store.InvalidInput, match="UTC offset"):
        with access_engine.begin() as conn:
            store.issue_card(conn, "ann", "1001", "2026-01-01T00:00:00", None)
    with access_engine.connect() as conn:
        assert [i["card_number"] for i in store.credential_items(conn, "s1")] == ["person:ann"]
        queued = [i for _, change in store.unpublished_changes(conn) for i in change.get("items", ())]
        assert not any(i.get("card_number") == "1001" for i in queued)


def test_credential_changes_are_queued_with_the_gates(access_engine):
    with access_engine.begin() as conn:
        store.create_site(conn, "s1", "Site")
        store.add_gate(conn, "s1", "north", "North")
        store.create_group(conn, "s1", "g1", "Group", ["north"])
        store.add_unit(conn, "s1", "1-1-101", "1", "1", "101")
        store.add_person(conn, "s1", "ann", "Ann", "resident", "1-1-101")
        store.add_to_group(conn, "g1", "ann")
        store.issue_card(conn, "ann", "1001")
        store.set_person_status(conn, "ann", "suspended")
    with access_engine.connect() as conn:
        queued = store.unpublished_changes(conn)
    changes = [(rev, c) for rev, c in queued if "items" in c]
    people_events = [c["payload"] for _, c in queued if c.get("event") == "people_changed"]
    # notify hears of her: registered, then suspended
    assert [[p["status"] for p in e["people"]] for e in people_events] == [["active"], ["suspended"]]
    last = {i["card_number"]: i for i in changes[-1][1]["items"]}
    assert last["1001"]["group_ids"] == ["g1"] and last["1001"]["status"] == "suspended"
    assert last["person:ann"]["status"] == "suspended"     # her QR codes stop too
    groups = [i for _, c in changes for i in c["items"] if i["type"] == "group"]
    assert groups[-1] == {"type": "group", "group_id": "g1", "gate_ids": ["north"], "time_profile_id": None}
    assert [rev for rev, _ in changes] == sorted(rev for rev, _ in changes)


def test_projection_applies_newer_revisions_only(access_engine):
    projection = Projection(engine_for("edgelink"))
    view = {"type": "credential", "card_number": "1001", "person_id": "ann", "person_name": "Ann",
            "status": "active", "valid_from": 0, "valid_until": 0, "gate_ids": [], "group_ids": ["g1"]}
    assert projection.apply("s1", 5, [view]) == 1
    projection.apply("s1", 4, [{**view, "status": "revoked"}])   # older: ignored
    projection.apply("s1", 5, [{**view, "status": "revoked"}])   # redelivered: ignored
    changes = projection.changes_since("s1", 0)
    assert [c.credential.status for c in changes] == ["active"]
    projection.apply("s1", 6, [{**view, "status": "revoked"}])
    cursor = changes[-1].version
    newer = projection.changes_since("s1", cursor)
    assert len(newer) == 1 and newer[0].credential.status == "revoked" and newer[0].version > cursor
    assert list(newer[0].credential.group_ids) == ["g1"]
    assert projection.changes_since("s2", 0) == []


def test_a_rebuilt_projection_has_a_new_epoch(access_engine, database, monkeypatch):
    view = {"type": "credential", "card_number": "1001", "person_id": "ann", "person_name": "Ann",
            "status": "active", "valid_from": 0, "valid_until": 0, "gate_ids": [], "group_ids": ["g1"]}
    projection = Projection(engine_for("edgelink"))
    assert projection.position("s1") == ("", 0)
    projection.apply("s1", 1, [view])
    epoch, version = projection.position("s1")
    assert epoch and version == 1
    projection.apply("s1", 2, [view])
    assert projection.position("s1") == (epoch, 2)
    assert projection.position("s2") == ("", 0)
    projection.apply("s2", 3, [view])
    assert projection.position("s2")[0] not in ("", epoch)
