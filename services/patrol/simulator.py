"""A patrol handheld, simulated: signs in over gRPC, downloads its rounds and routes, walks a
route (scans each checkpoint with a plausible GPS fix and device time), keeps scans in a local
outbox file while it is offline, and uploads them when it is back. Used by `gatehouse patrol
walk` / `gatehouse patrol sync`, the demo and the tests.

The outbox file is JSON: {"address", "guard_id", "token", "device_id", "pending": [...],
"sending": {"batch_id", "scans"} | null}. A batch being sent keeps its batch_id until the centre
has answered, so a crash between sending and the answer uploads the same batch again (and the
centre answers "duplicate" for what it already has).
"""
from __future__ import annotations

import json
import math
import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from gatehouse import signing
from gatehouse.patrol.v1 import patrol_pb2 as pb
from gatehouse.patrol.v1 import patrol_pb2_grpc as pb_grpc
from services.patrol import rules

WALK_SPEED_M_S = 1.3
BATCH = 200


def _ts(dt: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


@dataclass
class Step:
    checkpoint_id: str
    name: str
    scan_id: str
    online: bool
    outcome: str = "kept offline"
    reason: str = ""
    detail: str = ""
    flags: tuple[str, ...] = ()


class Handheld:
    def __init__(self, address: str, outbox: Path, device_id: str | None = None):
        self.address = address
        self.outbox = Path(outbox)
        self.state = json.loads(self.outbox.read_text()) if self.outbox.exists() else {
            "pending": [], "sending": None, "device_id": device_id or f"sim-{uuid.uuid4().hex[:8]}"}
        self.state["address"] = address
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.HandheldStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _save(self) -> None:
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.outbox.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.outbox)

    def _meta(self):
        if not self.state.get("token"):
            raise RuntimeError("not signed in: give the guard's id and PIN")
        return (("x-patrol-token", self.state["token"]),)

    def sign_in(self, guard_id: str, pin: str) -> pb.SignInReply:
        reply = self.stub.SignIn(pb.SignInRequest(guard_id=guard_id, pin=pin, device_id=self.state["device_id"],
                                                  device_time=_ts(datetime.now(UTC))), timeout=10)
        self.state.update(token=reply.token, guard_id=reply.guard_id, site_id=reply.site_id)
        self._save()
        return reply

    def assignments(self) -> pb.AssignmentsReply:
        return self.stub.Assignments(pb.AssignmentsRequest(hours_ahead=24), metadata=self._meta(), timeout=10)

    def walk(self, route_id: str, printed: dict[str, str], skip=(), offline_after: int | None = None,
             now: datetime | None = None, seed: int | None = None) -> tuple[pb.Round, list[Step]]:
        """Walk the guard's open round of `route_id`. `printed` maps QR checkpoints to the code
        printed there. Scans after the first `offline_after` stay in the outbox file."""
        now = now or datetime.now(UTC)
        data = self.assignments()
        route = next((r for r in data.routes if r.route_id == route_id), None)
        rounds = [r for r in data.rounds if r.route_id == route_id and r.status in ("pending", "in_progress")
                  and r.planned_start.ToDatetime(UTC) - rules.EARLY_ALLOWANCE <= now <= r.grace_until.ToDatetime(UTC)]
        if route is None or not rounds:
            upcoming = sorted(r.planned_start.ToDatetime(UTC) for r in data.rounds if r.route_id == route_id
                               and r.status == "pending")
            hint = f"; the next starts at {upcoming[0].isoformat()}" if upcoming else ""
            raise LookupError(f"{self.state.get('guard_id')} has no open round of route {route_id} now{hint}")
        rnd = rounds[0]
        keys = {k.key_id: k.public_key for k in data.keys}
        rng = random.Random(seed)
        cps = [c for c in sorted(route.checkpoints, key=lambda c: c.seq) if c.checkpoint_id not in set(skip)]
        legs = [0.0] + [rules.haversine_m(a.latitude, a.longitude, b.latitude, b.longitude)
                        for a, b in zip(cps, cps[1:], strict=False)]
        total = sum(legs) / WALK_SPEED_M_S + 20 * len(cps)          # walking, and 20 s at each checkpoint
        t = max(now - timedelta(seconds=total), rnd.planned_start.ToDatetime(UTC))
        steps, scans = [], []
        for i, (cp, leg) in enumerate(zip(cps, legs, strict=False)):
            t += timedelta(seconds=leg / WALK_SPEED_M_S + (20 if i else 0))
            if cp.tag_kind == "qr":
                tag = printed.get(cp.checkpoint_id, "")
                try:       # the handheld checks a code offline with the site's public keys
                    signing.verify("GP1", tag, keys)
                except signing.InvalidCode as exc:
                    steps.append(Step(cp.checkpoint_id, cp.name, "", True, "refused", "qr_signature_invalid",
                                      f"the handheld refused the code: {exc}"))
                    continue
            else:
                tag = cp.nfc_uid
            # a fix within ~5 m of the checkpoint, 6-12 m accuracy
            bearing, off = rng.uniform(0, 2 * math.pi), rng.uniform(0, 5)
            lat = cp.latitude + off * math.cos(bearing) / 111_320
            lon = cp.longitude + off * math.sin(bearing) / (111_320 * math.cos(math.radians(cp.latitude)))
            scan = {"scan_id": str(uuid.uuid4()), "round_id": rnd.round_id, "method": cp.tag_kind, "tag": tag,
                    "device_time": t.isoformat(), "latitude": lat, "longitude": lon,
                    "accuracy_m": round(rng.uniform(6, 12), 1)}
            online = offline_after is None or len(scans) < offline_after
            scans.append((scan, online))
            steps.append(Step(cp.checkpoint_id, cp.name, scan["scan_id"], online))
        live = [s for s, online in scans if online]
        by_id = {}
        if live:
            by_id = {r.scan_id: r for r in self._send(str(uuid.uuid4()), live).results}
        self.state["pending"].extend(s for s, online in scans if not online)
        self._save()
        for step in steps:
            r = by_id.get(step.scan_id)
            if r is not None:
                step.outcome, step.reason, step.detail, step.flags = r.outcome, r.reason, r.detail, tuple(r.flags)
        return rnd, steps

    def _send(self, batch_id: str, scans: list[dict]) -> pb.ScanBatchReply:
        batch = pb.ScanBatch(batch_id=batch_id, device_id=self.state["device_id"],
                             device_sent_at=_ts(datetime.now(UTC)), scans=[
            pb.Scan(scan_id=s["scan_id"], round_id=s["round_id"], method=s["method"], tag=s["tag"],
                    device_time=_ts(datetime.fromisoformat(s["device_time"])), has_location=True,
                    latitude=s["latitude"], longitude=s["longitude"], accuracy_m=s["accuracy_m"]) for s in scans])
        return self.stub.UploadScans(batch, metadata=self._meta(), timeout=30)

    def pending(self) -> int:
        sending = self.state.get("sending") or {}
        return len(self.state["pending"]) + len(sending.get("scans", []))

    def sync(self) -> list[pb.ScanResult]:
        """Upload everything kept offline; returns the centre's answer for each scan."""
        results = []
        while True:
            if not self.state.get("sending"):
                if not self.state["pending"]:
                    return results
                chunk, self.state["pending"] = self.state["pending"][:BATCH], self.state["pending"][BATCH:]
                self.state["sending"] = {"batch_id": str(uuid.uuid4()), "scans": chunk}
                self._save()
            sending = self.state["sending"]
            reply = self._send(sending["batch_id"], sending["scans"])
            results.extend(reply.results)
            self.state["sending"] = None
            self._save()
