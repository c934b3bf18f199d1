"""The demo estate's patrol part (called by gatehouse.demo.seed; idempotent).

Wang Fang (p-wangfang, patrol PIN 1357) walks the night route of four checkpoints (two NFC tags,
two signed QR codes) every two hours from 20:00 to 08:00. One round was walked on time through
the handheld server (and she reported a leak in the pump room: a hazard to fix); one round,
planned two hours ago, was never walked: its grace has run out, so the patrol service raises
`patrol.round_missed` seconds after seeding. One more round is open now for `gatehouse patrol walk`.
"""
from __future__ import annotations

import uuid
from datetime import timedelta

SITE = "demo"
GUARD = ("p-wangfang", "Wang Fang", "1357")
ROUTE = "demo-night"
CHECKPOINTS = [   # around the demo estate (Hefei), 60-90 m apart
    {"checkpoint_id": "demo-cp-north-gate", "name": "North gate 北门", "tag_kind": "nfc", "nfc_uid": "04A1B2C3",
     "latitude": 31.82040, "longitude": 117.22710, "radius_m": 25},
    {"checkpoint_id": "demo-cp-garage-b1", "name": "Garage B1 地库", "tag_kind": "qr",
     "latitude": 31.81980, "longitude": 117.22760, "radius_m": 40},
    {"checkpoint_id": "demo-cp-pump-room", "name": "Pump room 水泵房", "tag_kind": "nfc", "nfc_uid": "04A1B2C4",
     "latitude": 31.81920, "longitude": 117.22700, "radius_m": 25},
    {"checkpoint_id": "demo-cp-building-2", "name": "Building 2 roof 2号楼天台", "tag_kind": "qr",
     "latitude": 31.81960, "longitude": 117.22630, "radius_m": 30},
]
SCHEDULE = {"kind": "interval", "every_minutes": 120, "window_start": "20:00", "window_end": "08:00",
            "expected_minutes": 30, "grace_minutes": 10}
DONE, MISSED = "demo-round-walked", "demo-round-missed"
LEAK = str(uuid.uuid5(uuid.NAMESPACE_URL, "gatehouse-demo/patrol/leak"))


def _walk(route: dict, planned_start, now):
    """Walk the DONE round over gRPC as the handheld would, 20 minutes into it."""
    import grpc

    from gatehouse import settings
    from gatehouse.patrol.v1 import patrol_pb2 as pb
    from services.patrol.handheld import address
    from services.patrol.simulator import Handheld
    hh = Handheld(address(), settings.var_dir() / "demo" / "handheld-demo.json", device_id="demo-handheld")
    try:
        grpc.channel_ready_future(hh.channel).result(timeout=20)
        hh.sign_in(GUARD[0], GUARD[2])
        printed = {c["checkpoint_id"]: c.get("qr_code", "") for c in route["checkpoints"]}
        _, steps = hh.walk(ROUTE, printed, now=planned_start + timedelta(minutes=20), seed=7)
        hh.stub.ReportIncident(pb.IncidentReport(
            incident_id=LEAK, round_id=DONE, checkpoint_id="demo-cp-pump-room", type="water_leak", severity="high",
            text="水泵房地面积水，2号泵密封处滴水 (water on the pump room floor, pump 2 seal dripping)"),
            metadata=hh._meta(), timeout=10)
        return steps
    finally:
        hh.close()


def seed(rpc, now):
    """Yield one printable line per thing seeded."""
    patrol = rpc.patrol
    guard_id, name, pin = GUARD
    try:
        patrol.guard(guard_id)
        patrol.set_guard(SITE, guard_id, name)            # already there: keep her PIN (and her handheld signed in)
    except Exception:
        patrol.set_guard(SITE, guard_id, name, pin)
    route = patrol.set_route(SITE, ROUTE, "Night route 夜间巡逻", CHECKPOINTS, True, "normal", "Asia/Shanghai")
    patrol.set_schedule("demo-night-2h", ROUTE, SCHEDULE, guard_id)
    yield (f"  patrol route {ROUTE}: {', '.join(c['name'] for c in CHECKPOINTS)}; every 2 h 20:00-08:00 "
           f"for {name} (patrol PIN {pin})")
    done_start = now - timedelta(minutes=40)
    walked = patrol.plan_round(ROUTE, done_start.isoformat(), 30, 15, guard_id, None, DONE)
    if walked["status"] in ("pending", "in_progress"):
        try:
            steps = _walk(route, done_start, now)
            yield f"  round {DONE}: walked by {name} on the handheld ({', '.join(s.outcome for s in steps)})"
        except Exception as exc:   # the handheld server is not up: say so, the rest still works
            yield f"  round {DONE}: not walked, the handheld server did not answer ({type(exc).__name__}: {exc})"
    else:
        yield f"  round {DONE}: {walked['status']}"
    patrol.plan_round(ROUTE, (now - timedelta(hours=2)).isoformat(), 30, 10, guard_id, None, MISSED)
    yield (f"  round {MISSED}: planned 2 h ago and never walked; its grace is over, so patrol.round_missed "
           "follows within seconds (gatehouse patrol rounds)")
    yours = f"demo-round-{now:%Y%m%d%H}"
    patrol.plan_round(ROUTE, now.isoformat(), 45, 15, guard_id, None, yours)
    yield (f"  round {yours} is open now: gatehouse patrol walk {ROUTE} --guard {guard_id} --pin {pin} "
           "--offline-after 2, then gatehouse patrol sync")
    yield "  hazard: a leak in the pump room, reported on the walked round (gatehouse patrol hazards)"
