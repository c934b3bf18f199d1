"""Patrol with real processes: the patrol service (nameko), its handheld gRPC server, the console,
RabbitMQ. Set up through the console API, a guard signs in over gRPC on loopback, uploads the same
batch three times, forged and unknown tags and an unassigned guard are refused, a round whose
grace runs out is reported on the bus within seconds, an incident is published, and the CLI's
simulated handheld walks a route, loses the signal and syncs."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from gatehouse.bus import EventConsumer
from gatehouse.patrol.v1 import patrol_pb2 as pb
from gatehouse.patrol.v1 import patrol_pb2_grpc as pb_grpc
from services.patrol.service import CLOSE_INTERVAL_S
from tests.stack import BIN, wait_for
from tests.test_gate_access import api, ok
from tests.test_patrol_store import CPS, JPEG


def _ts(dt):
    from google.protobuf.timestamp_pb2 import Timestamp
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _scan(round_id, method, tag, at, photo=b""):
    return pb.Scan(scan_id=str(uuid.uuid4()), round_id=round_id, method=method, tag=tag, device_time=_ts(at),
                   has_location=True, latitude=31.8200, longitude=117.2200, accuracy_m=8, photo=photo)


def test_handhelds_rounds_missed_detection_incidents_and_the_simulator(stack):
    stack.start_patrol()
    stack.start_console()
    events = []
    consumer = EventConsumer(stack.amqp_uri, "test.patrol-supervisor",
                             [("patrol", "round_missed"), ("patrol", "incident_reported")],
                             lambda kind, payload: events.append((kind, payload, datetime.now(UTC))))
    consumer.start_thread()
    assert consumer.ready.wait(10)
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.patrol_port}")
    try:
        hh = pb_grpc.HandheldStub(channel)
        for guard, pin in (("g1", "2468"), ("g2", "1357")):
            ok(stack, "POST", "/api/patrol/guards", {"site_id": "s1", "guard_id": guard, "name": guard, "pin": pin})
        wait_for(lambda: ok(stack, "GET", "/api/health")["services"]["patrol"]["state"] == "up", timeout=15,
                 what="patrol's heartbeat on the console's health board")
        route = ok(stack, "POST", "/api/patrol/routes", {"site_id": "s1", "route_id": "r1", "name": "Night route",
                                                         "checkpoints": CPS})
        code = next(c["qr_code"] for c in route["checkpoints"] if c["checkpoint_id"] == "cp-garage")
        now = datetime.now(UTC)
        ok(stack, "POST", "/api/patrol/rounds", {"route_id": "r1", "planned_start": (now - timedelta(minutes=5))
                                                 .isoformat(), "expected_minutes": 30, "grace_minutes": 10,
                                                 "guard_id": "g1", "round_id": "walk"})
        code_400, err = api(stack, "POST", "/api/patrol/rounds", {"route_id": "r1", "planned_start": "tomorrow",
                                                                  "expected_minutes": 30, "grace_minutes": 10,
                                                                  "guard_id": "g1"})
        assert code_400 == 400 and "planned_start" in err["error"]

        # sign-in: a wrong PIN and a missing token are refused
        with pytest.raises(grpc.RpcError) as wrong:
            hh.SignIn(pb.SignInRequest(guard_id="g1", pin="0000", device_id="hh-1"), timeout=10)
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as anonymous:
            hh.Assignments(pb.AssignmentsRequest(), timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        g1 = (("x-patrol-token", hh.SignIn(pb.SignInRequest(guard_id="g1", pin="2468"), timeout=10).token),)
        g2 = (("x-patrol-token", hh.SignIn(pb.SignInRequest(guard_id="g2", pin="1357"), timeout=10).token),)
        data = hh.Assignments(pb.AssignmentsRequest(), metadata=g1, timeout=10)
        assert [r.round_id for r in data.rounds] == ["walk"] and len(data.keys) == 1
        assert [c.checkpoint_id for c in data.routes[0].checkpoints] == ["cp-gate", "cp-garage", "cp-pump"]

        # the same batch three times: stored once
        batch = pb.ScanBatch(batch_id=str(uuid.uuid4()), device_id="hh-1", device_sent_at=_ts(datetime.now(UTC)),
                             scans=[_scan("walk", "nfc", "04A1B2C3", now - timedelta(minutes=4)),
                                    _scan("walk", "qr", code, now - timedelta(minutes=3)),
                                    _scan("walk", "nfc", "04A1B2C4", now - timedelta(minutes=2), JPEG)])
        replies = [hh.UploadScans(batch, metadata=g1, timeout=10) for _ in range(3)]
        assert [r.outcome for r in replies[0].results] == ["stored"] * 3
        assert [r.outcome for r in replies[2].results] == ["duplicate"] * 3
        forged = code[:-4] + ("AAAA" if not code.endswith("AAAA") else "BBBB")
        refused = hh.UploadScans(pb.ScanBatch(batch_id=str(uuid.uuid4()), scans=[
            _scan("walk", "qr", forged, now), _scan("walk", "nfc", "04FFFFFF", now)]), metadata=g1, timeout=10)
        assert [(r.outcome, r.reason) for r in refused.results] == [("refused", "qr_signature_invalid"),
                                                                    ("refused", "unknown_tag")]
        intruder = hh.UploadScans(pb.ScanBatch(batch_id=str(uuid.uuid4()), scans=[
            _scan("walk", "nfc", "04A1B2C3", now)]), metadata=g2, timeout=10)
        assert intruder.results[0].reason == "not_assigned" and "not to g2" in intruder.results[0].detail
        with pytest.raises(grpc.RpcError) as denied:
            hh.ReportIncident(pb.IncidentReport(incident_id=str(uuid.uuid4()), round_id="walk", type="other",
                                                severity="low", text="x"), metadata=g2, timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not assigned to g2" in denied.value.details()
        incident_id = str(uuid.uuid4())
        for _ in range(2):
            reply = hh.ReportIncident(pb.IncidentReport(incident_id=incident_id, round_id="walk", checkpoint_id="cp-pump",
                                                        type="water_leak", severity="high", text="Leak by pump 2",
                                                        photo=JPEG), metadata=g1, timeout=10)
        assert reply.duplicate and reply.status == "open"
        walked = ok(stack, "GET", "/api/patrol/rounds/walk")
        assert walked["status"] == "complete" and walked["on_time"] is True and len(walked["scans"]) == 3
        flagged = ok(stack, "GET", "/api/sites/s1/patrol/review")["flagged"]     # GPS fixes at the gate
        assert sorted(s["checkpoint_id"] for s in flagged) == ["cp-garage", "cp-pump"]
        assert all(s["flags"] == ["outside_radius"] for s in flagged)
        verdict = ok(stack, "POST", f"/api/patrol/scans/{flagged[0]['scan_id']}/review",
                     {"reviewer": "supervisor-chen", "verdict": "accepted", "note": "GPS poor in the garage"})
        assert verdict["verdict"] == "accepted" and verdict["counted"]
        assert len(ok(stack, "GET", "/api/sites/s1/patrol/review")["flagged"]) == 1
        assert api_raw(stack, f"/api/patrol/scans/{batch.scans[2].scan_id}/photo") == JPEG

        # a round whose grace ends in a few seconds: patrol.round_missed follows within the timer interval
        grace_end = datetime.now(UTC) + timedelta(seconds=3)
        ok(stack, "POST", "/api/patrol/rounds", {"route_id": "r1", "planned_start": (grace_end - timedelta(minutes=1))
                                                 .isoformat(), "expected_minutes": 1, "grace_minutes": 0,
                                                 "guard_id": "g1", "round_id": "soon"})
        missed = wait_for(lambda: [e for e in events if e[0] == "round_missed"], timeout=20, what="round_missed")
        kind, payload, received = missed[0]
        lag = (received - grace_end).total_seconds()
        assert 0 <= lag <= CLOSE_INTERVAL_S + 3, lag
        assert payload["round_id"] == "soon" and payload["kind"] == "round" and payload["route_name"] == "Night route"
        assert payload["missed_checkpoints"] == ["cp-gate", "cp-garage", "cp-pump"] and payload["site_id"] == "s1"
        assert payload["supervisor_role"] == "patrol_supervisor" and payload["assigned_to"] == "g1"
        incident = wait_for(lambda: [p for k, p, _ in events if k == "incident_reported"], timeout=10,
                            what="incident_reported")
        assert len(incident) == 1 and incident[0]["incident_id"] == incident_id and incident[0]["severity"] == "high"
        hazard = ok(stack, "POST", f"/api/patrol/incidents/{incident_id}/assign",
                    {"actor": "supervisor-chen", "assignee": "plumber-li"})
        assert hazard["status"] == "assigned"
        code_400, err = api(stack, "POST", f"/api/patrol/incidents/{incident_id}/verify", {"actor": "chen"})
        assert code_400 == 400 and "cannot take" in err["error"]

        # the CLI's simulated handheld: one scan online, then no signal, then back
        ok(stack, "POST", "/api/patrol/rounds", {"route_id": "r1", "planned_start": datetime.now(UTC).isoformat(),
                                                 "expected_minutes": 30, "grace_minutes": 10, "guard_id": "g1",
                                                 "round_id": "sim"})
        outbox = stack.tmp / "handheld.json"
        walk = stack.run(str(BIN / "gatehouse"), "patrol", "walk", "r1", "--guard", "g1", "--pin", "2468",
                         "--offline-after", "1", "--skip", "cp-pump", "--outbox", str(outbox))
        assert "stored" in walk.stdout and "kept offline" in walk.stdout and "1 scan(s) kept" in walk.stdout
        synced = stack.run(str(BIN / "gatehouse"), "patrol", "sync", "--outbox", str(outbox))
        assert "cp-garage" in synced.stdout and "stored" in synced.stdout and "0 left" in synced.stdout
        sim = ok(stack, "GET", "/api/patrol/rounds/sim")
        assert sim["status"] == "in_progress" and sim["result"]["visited"] == ["cp-gate", "cp-garage"]

        report = api_raw(stack, "/api/sites/s1/patrol/report?since=" + (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
                         + "&until=" + (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ") + "&format=xlsx")
        assert report[:2] == b"PK"
    finally:
        channel.close()
        consumer.should_stop = True


def api_raw(stack, path: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.console_port}{path}", timeout=10) as response:
        assert response.status == 200
        return response.read()
