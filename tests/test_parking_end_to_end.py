"""Parking at the centre with real processes: lane events reported over gRPC reach the parking
service through the bus (beside access), sessions are priced, the cashier's payment through
the console API counts once, and billing hears `parking.session_closed`."""
from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import grpc

from edge.store import EdgeStore
from gatehouse.bus import EventConsumer
from gatehouse.edge.v1 import edge_pb2 as pb
from gatehouse.edge.v1 import edge_pb2_grpc as pb_grpc
from tests.stack import wait_for
from tests.test_gate_access import api, ok

TARIFF = {"free_minutes": 15, "first_period_minutes": 60, "first_period_fen": 500, "increment_minutes": 30,
          "increment_fen": 200, "night_start": "", "daily_cap_fen": 3000}


def lane_event(kind, at: datetime, seq: int, **attributes) -> pb.EdgeEvent:
    event = pb.EdgeEvent(event_id=str(uuid.uuid4()), device_id="cam-in", gate_id=attributes["lane_id"], kind=kind,
                         device_seq=seq, attributes={"lot_id": "lot1", **attributes})
    event.device_time.FromDatetime(at)
    return event


def test_lane_events_sessions_payments_and_billing(stack):
    stack.start_access()
    stack.start_parking()
    stack.start_edgelink()
    stack.start_console()
    secret = stack.register_agent()
    closed = []
    consumer = EventConsumer(stack.amqp_uri, "test.billing", [("parking", "session_closed")],
                             lambda _type, payload: closed.append(payload))
    consumer.start_thread()
    assert consumer.ready.wait(10)
    try:
        ok(stack, "POST", "/api/lots", {"site_id": stack.site_id, "lot_id": "lot1", "name": "Garage",
                                        "shared_capacity": 50, "tariff": TARIFF})
        ok(stack, "POST", "/api/lots/lot1/lanes", {"lane_id": "in1", "name": "Entry", "direction": "entry"})
        ok(stack, "POST", "/api/lots/lot1/lanes", {"lane_id": "out1", "name": "Exit", "direction": "exit"})
        ok(stack, "POST", "/api/lots/lot1/vehicles", {"plate": "皖A12345", "kind": "resident", "holder": "1-1-101"})
        code, answer = api(stack, "POST", "/api/lots/lot1/vehicles", {"plate": "皖A1", "kind": "monthly",
                                                                     "holder": "x"})
        assert code == 400 and answer["error"]

        channel = grpc.insecure_channel(f"127.0.0.1:{stack.edgelink_port}")
        stub = pb_grpc.EdgeLinkStub(channel)
        metadata = (("x-agent-id", stack.agent_id), ("x-agent-secret", secret))

        # what the lanes need reaches an agent's store through edgelink's projection
        def synced():
            edge = EdgeStore(stack.tmp / "edge-check" / "agent.db", durable=False)
            try:
                for batch in stub.Sync(pb.SyncRequest(cursor=0, follow=False), metadata=metadata, timeout=10):
                    edge.apply_changes(batch.changes, batch.cursor, batch.epoch)
                lots, lanes = edge.parking()
                right = edge.vehicle_right("lot1", "皖A12345")
                return (lots, lanes, right) if right and set(lanes) == {"in1", "out1"} else None
            finally:
                edge.close()
        lots, lanes, right = wait_for(synced, timeout=20, what="parking items at the edge")
        assert right["kind"] == "resident" and lots["lot1"].shared_capacity == 50 and lanes["out1"].direction == "exit"
        assert json.loads(lots["lot1"].tariff_json)["first_period_fen"] == 500
        entered = datetime.now(UTC) - timedelta(minutes=61)
        batch = pb.EventBatch(events=[
            lane_event("vehicle_entered", entered, 1, lane_id="in1", plate="苏E9K123"),
            lane_event("vehicle_entered", entered + timedelta(seconds=2), 2, lane_id="in1", plate="苏E9K123"),
            lane_event("vehicle_entered", entered, 3, lane_id="in1", plate="皖A12345"),
            lane_event("plate_unconfirmed", entered, 4, lane_id="in1", plate="皖A1Z345", confidence="0.42")])
        for _ in range(2):                      # the agent retries the same batch
            stub.ReportEvents(batch, metadata=metadata, timeout=10)

        def open_sessions():
            rows = ok(stack, "GET", "/api/lots/lot1/sessions?status=open")
            return rows if len(rows) == 2 else None
        sessions = {s["plate"]: s for s in wait_for(open_sessions, timeout=20, what="two open sessions")}
        assert sessions["皖A12345"]["kind"] == "resident" and sessions["苏E9K123"]["kind"] == "visitor"
        reads = ok(stack, "GET", "/api/lots/lot1/reads")
        assert [(r["plate_read"], r["confidence"]) for r in reads] == [("皖A1Z345", 0.42)]
        assert ok(stack, "POST", f"/api/reads/{reads[0]['read_id']}/decision",
                  {"operator": "op-li", "plate": "皖A12345"})["status"] == "confirmed"

        visitor = sessions["苏E9K123"]["session_id"]
        quote = ok(stack, "GET", f"/api/parking-sessions/{visitor}/quote")
        assert quote["due_fen"] == 700, quote
        for _ in range(2):                      # the cashier's terminal retries
            paid = ok(stack, "POST", f"/api/parking-sessions/{visitor}/payments",
                      {"payment_id": "cash-0001", "amount_fen": 700, "method": "cash", "recorded_by": "cashier-1"})
        assert paid["paid_fen"] == 700 and len(paid["payments"]) == 1
        code, answer = api(stack, "POST", f"/api/parking-sessions/{visitor}/payments",
                           {"payment_id": "cash-0002", "amount_fen": -5, "method": "cash", "recorded_by": "c"})
        assert code == 400 and "amount_fen" in answer["error"]

        stub.ReportEvents(pb.EventBatch(events=[
            lane_event("vehicle_exited", datetime.now(UTC), 5, lane_id="out1", plate="苏E9K123")]),
            metadata=metadata, timeout=10)
        wait_for(lambda: closed, timeout=20, what="parking.session_closed")
        assert closed[0]["plate"] == "苏E9K123" and closed[0]["fee_fen"] == 700 and closed[0]["due_fen"] == 0
        assert ok(stack, "GET", "/api/lots/lot1")["inside"] == 1
        channel.close()
    finally:
        consumer.should_stop = True


# -- the lane at the edge ------------------------------------------------------------------------------

def _jpeg() -> bytes:
    import cv2
    import numpy as np
    image = np.full((48, 188, 3), (180, 80, 20), np.uint8)
    cv2.putText(image, "A1Z3?5", (10, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return cv2.imencode(".jpg", image)[1].tobytes()


def lane_state(stack, lane):
    import asyncio

    from edge.profiles import load_profile
    from edge.sim import barrier, display
    from tests.stack import BARRIER_PROFILE, DISPLAY_PROFILE
    bar = asyncio.run(barrier.read_state("127.0.0.1", stack.lane_ports[lane][0], load_profile(BARRIER_PROFILE)))
    led = asyncio.run(display.read_state("127.0.0.1", stack.lane_ports[lane][1], load_profile(DISPLAY_PROFILE)))
    return bar, led


def camera(stack, lane, **request):
    import socket
    with socket.create_connection(("127.0.0.1", stack.reader_port), timeout=15) as conn:
        conn.sendall(json.dumps({"lane_id": lane, **request}, ensure_ascii=False).encode() + b"\n")
        return json.loads(conn.makefile(encoding="utf-8").readline())


def test_lanes_at_the_edge_resident_visitor_pays_and_unsure_read(stack):
    stack.start_access()
    stack.start_parking()
    stack.start_edgelink()
    stack.start_console()
    stack.start_lane_sims()
    stack.register_agent()
    awaited = []
    consumer = EventConsumer(stack.amqp_uri, "test.cashiers", [("parking", "payment_awaited")],
                             lambda _type, payload: awaited.append(payload))
    consumer.start_thread()
    assert consumer.ready.wait(10)
    ok(stack, "POST", "/api/lots", {"site_id": stack.site_id, "lot_id": "lot1", "name": "Garage",
                                    "shared_capacity": 3, "tariff": {**TARIFF, "free_minutes": 0}})
    ok(stack, "POST", "/api/lots/lot1/lanes", {"lane_id": "in1", "name": "Entry", "direction": "entry"})
    ok(stack, "POST", "/api/lots/lot1/lanes", {"lane_id": "out1", "name": "Exit", "direction": "exit",
                                               "policy": {"offline_unpaid_exit": "wait"}})
    ok(stack, "POST", "/api/lots/lot1/vehicles", {"plate": "皖A12345", "kind": "resident", "holder": "1-1-101"})
    stack.start_agent(stack.write_site_file(devices=[], lanes=stack.lane_config(camera_silence_s=2)))

    def lane_ready():
        reply = camera(stack, "in1", plate="皖A12345", confidence=0.99)
        return reply if "error" not in reply else None
    # a resident: in at once
    resident = wait_for(lane_ready, timeout=30, what="the lane synced and deciding")
    assert resident["opened"] and resident["reason"] == "resident", resident
    wait_for(lambda: lane_state(stack, "in1")[0]["open_limit"], timeout=10, what="the entry barrier up")
    assert lane_state(stack, "in1")[1]["plate"] == "皖A12345"

    # a frame the agent reads itself; a corrupt frame is refused and the lane keeps working
    import cv2

    from edge.lpr.render import render_scene
    scene = render_scene(3, kind="blue")
    ok(stack, "POST", "/api/lots/lot1/vehicles", {"plate": scene.plates[0].text, "kind": "staff", "holder": "guard"})
    frame = base64.b64encode(cv2.imencode(".jpg", scene.image)[1].tobytes()).decode()
    seen = wait_for(lambda: (lambda r: r if r.get("reason") == "staff" else None)(camera(stack, "in1", frame_b64=frame)),
                    timeout=20, what="the rendered staff car read and let in")
    assert seen["opened"] and seen["plate"] == scene.plates[0].text, seen
    broken = camera(stack, "in1", frame_b64=base64.b64encode(b"\xff\xd8\xff\xe0 not really a jpeg").decode())
    assert "error" in broken and "frame" in broken["error"]

    again = camera(stack, "in1", plate="皖A12345", confidence=0.99)       # read twice within seconds
    assert again["opened"] and again["reason"] == "already_inside", again

    # a visitor: in (the last shared space; the resident took one), a second visitor refused (lot full)
    visitor = camera(stack, "in1", plate="苏E9K123", confidence=0.95)
    assert visitor["opened"] and visitor["reason"] == "visitor", visitor
    assert camera(stack, "in1", plate="浙B22222", confidence=0.95)["reason"] == "lot_full"
    crop = base64.b64encode(_jpeg()).decode()
    assert camera(stack, "in1", plate="皖A1Z345", confidence=0.40, crop_jpeg_b64=crop)["reason"] == "low_confidence"
    reads = wait_for(lambda: ok(stack, "GET", "/api/lots/lot1/reads") or None, timeout=15, what="the read queued")
    assert reads[0]["has_crop"] and reads[0]["confidence"] == 0.4
    # the operator reads it as a resident's car: the lane lets it in
    ok(stack, "POST", "/api/lots/lot1/vehicles", {"plate": "皖A17345", "kind": "resident", "holder": "1-1-102"})
    time.sleep(0.5)                                    # the right reaches the agent
    ok(stack, "POST", f"/api/reads/{reads[0]['read_id']}/decision", {"operator": "op-li", "plate": "皖A17345"})
    wait_for(lambda: any(e["kind"] == "vehicle_entered" and e["attributes"].get("plate") == "皖A17345"
                         for e in stack.events()), timeout=15, what="the confirmed car let in")
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.console_port}/api/reads/{reads[0]['read_id']}/crop.jpg",
                                timeout=10) as response:
        assert response.headers["Content-Type"] == "image/jpeg" and response.read() == _jpeg()
    sessions = wait_for(lambda: (lambda r: r if len(r) == 4 else None)(
        ok(stack, "GET", "/api/lots/lot1/sessions?status=open")), timeout=15, what="four sessions at the centre")
    visit = next(s for s in sessions if s["plate"] == "苏E9K123")

    # the visitor leaves: the fee (no free minutes in this lot) shows, the exit waits; the cashier's
    # payment at the centre reaches the lane, which opens
    waiting = camera(stack, "out1", plate="苏E9K123", confidence=0.95)
    assert not waiting["opened"] and waiting["reason"] == "fee_due" and waiting["fee_fen"] == 500, waiting
    wait_for(lambda: lane_state(stack, "out1")[1]["fee_fen"] == 500, timeout=10, what="the fee on the display")
    due = ok(stack, "GET", f"/api/parking-sessions/{visit['session_id']}/quote")["due_fen"]
    assert due == 500
    ok(stack, "POST", f"/api/parking-sessions/{visit['session_id']}/payments",
       {"payment_id": "cash-lane-1", "amount_fen": due, "method": "cash", "recorded_by": "cashier-1"})
    wait_for(lambda: lane_state(stack, "out1")[0]["open_limit"], timeout=15, what="the exit barrier up after paying")
    closed = wait_for(lambda: (lambda r: r if r and r[0]["status"] == "closed" else None)(
        ok(stack, "GET", "/api/lots/lot1/sessions?plate=" + quote("苏E9K123"))), timeout=15, what="the visit closed")
    assert closed[0]["session_id"] == visit["session_id"] and closed[0]["fee_fen"] == 500

    # a car with no entry record: the lane's flat fee, and it waits
    orphan = camera(stack, "out1", plate="粤B54321", confidence=0.95)
    assert not orphan["opened"] and orphan["reason"] == "no_entry_record" and orphan["fee_fen"] == 2000, orphan
    camera(stack, "out1", plate="粤B54321", confidence=0.95)             # read again while it waits
    wait_for(lambda: [a for a in awaited if a["plate"] == "粤B54321"], timeout=15, what="the cashiers told")
    time.sleep(1)
    assert [(a["plate"], a["due_fen"]) for a in awaited] == [("苏E9K123", 500), ("粤B54321", 2000)]

    # fire: every barrier up and kept up (the waiting car drives out), then back to normal
    ok(stack, "POST", "/api/sites", {"site_id": stack.site_id, "name": "Garage site"})
    ok(stack, "POST", f"/api/sites/{stack.site_id}/emergency", {"active": True, "actor": "op-li", "reason": "fire"})
    wait_for(lambda: lane_state(stack, "out1")[0]["open_limit"] and lane_state(stack, "in1")[0]["open_limit"],
             timeout=15, what="both barriers up in the emergency")
    ok(stack, "POST", f"/api/sites/{stack.site_id}/emergency", {"active": False, "actor": "op-li", "reason": "over"})

    # offline: the lane decides alone by its policy; the entry reaches the centre once, later
    stack.stop("edgelink")
    wait_for(lambda: camera(stack, "out1", plate="皖A12345", confidence=0.99)["offline"], timeout=30,
             what="the agent to notice")                                  # the resident leaves (free)
    offline_visit = camera(stack, "in1", plate="闽D77777", confidence=0.95)
    assert offline_visit["opened"] and offline_visit["offline"], offline_visit
    stack.start_edgelink()
    sessions = wait_for(lambda: ok(stack, "GET", "/api/lots/lot1/sessions?plate=" + quote("闽D77777")) or None,
                        timeout=30, what="the offline entry at the centre")
    assert len(sessions) == 1 and "offline_entry" in sessions[0]["flags"]

    # the camera goes quiet: device_offline for it
    wait_for(lambda: any(e["kind"] == "device_offline" and e["device_id"] == "in1.camera" for e in stack.events()),
             timeout=20, what="camera offline event")
    consumer.should_stop = True
