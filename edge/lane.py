"""A parking lane at the edge: a camera's read (or a frame the agent reads itself), the
decision from the synced rights, lot and tariff (services/parking/rules.py, the centre's own
rules), the barrier and the display.

The camera reaches the agent on the reader port, one JSON object a line:
  {"lane_id": "in1", "plate": "皖A12345", "confidence": 0.97}   a camera that reads plates itself
  {"lane_id": "in1", "frame_b64": "<JPEG>"}                       a frame for the agent to read
  {"lane_id": "in1", "heartbeat": true}                          "still here" (no car)
A lane that hears nothing for `camera_silence_s` raises `device_offline` for its camera.

Events (each committed to the outbox): `vehicle_entered` / `vehicle_exited` once the barrier
has been told to open (these make the centre's sessions), `vehicle_refused`, `exit_waiting`
(fee due, or the cashier), `plate_unconfirmed` (a read below the lane's confidence, for the
operator), `frame_rejected`, `lane_open_failed`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from edge.config import LaneConfig
from edge.drivers.barrier import BarrierDriver
from edge.drivers.display import DisplayDriver
from edge.drivers.turnstile import DeviceOffline
from services.parking import rules

log = logging.getLogger("edge.lane")
DISPLAY_MESSAGES = {"have_a_good_trip": "paid"}     # rules' message name -> the display profile's
MAX_CROP_B64 = 64 << 10                             # edgelink's limit for the crop attribute


def _crop_jpeg_b64(frame: bytes, box) -> str | None:
    """The plate's part of a frame, as a small JPEG in base64, for the operator's queue."""
    import cv2
    import numpy as np
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    x, y, w, h = (int(v) for v in box)
    pad = max(4, h // 2)
    crop = image[max(0, y - pad):y + h + pad, max(0, x - pad):x + w + pad]
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return base64.b64encode(jpeg.tobytes()).decode() if ok and crop.size else None


class SyncedRights(Mapping):
    """A lot's vehicle rights as parking rules want them, read from the agent's store on demand
    (100,000 plates stay on disk, not in memory)."""

    def __init__(self, store, lot_id: str):
        self.store, self.lot_id = store, lot_id

    def __getitem__(self, plate: str) -> rules.VehicleRight:
        row = self.store.vehicle_right(self.lot_id, plate)
        if row is None:
            raise KeyError(plate)
        return rules.VehicleRight(
            plate=row["plate"], kind=row["kind"], grace_days=row["grace_days"], free_minutes=row["free_minutes"],
            fixed_space=bool(row["fixed_space"]), holder=row["holder"],
            valid_from=datetime.fromisoformat(row["valid_from"]).date() if row["valid_from"] else None,
            valid_until=datetime.fromisoformat(row["valid_until"]).date() if row["valid_until"] else None)

    def __iter__(self) -> Iterator[str]:
        return (p for (p,) in self.store.db.execute("SELECT plate FROM vehicles WHERE lot_id = ?", (self.lot_id,)))

    def __len__(self) -> int:
        return self.store.db.execute("SELECT count(*) FROM vehicles WHERE lot_id = ?", (self.lot_id,)).fetchone()[0]


class LaneRunner:
    def __init__(self, config: LaneConfig, barrier_profile, display_profile, agent):
        self.config, self.agent = config, agent
        self.lane_id, self.lot_id = config.lane_id, config.lot_id
        self.barrier_id, self.display_id, self.camera_id = (f"{self.lane_id}.{part}" for part in
                                                            ("barrier", "display", "camera"))
        self.barrier = BarrierDriver(self.barrier_id, barrier_profile, config.barrier.host, config.barrier.port,
                                     on_event=agent.device_event_handler(self.barrier_id))
        self.display = (DisplayDriver(self.display_id, display_profile, config.display.host, config.display.port,
                                      on_event=agent.device_event_handler(self.display_id))
                        if config.display else None)
        self.waiting: dict[str, float] = {}      # plate -> confidence, for exits waiting for payment
        self.camera_heard = time.monotonic()
        self.camera_online = True
        self._watchdog: asyncio.Task | None = None

    @property
    def device_ids(self) -> list[str]:
        return [self.barrier_id, self.camera_id] + ([self.display_id] if self.display else [])

    async def start(self) -> None:
        await self.barrier.start()
        if self.display:
            await self.display.start()
        self._watchdog = asyncio.create_task(self._watch_camera(), name=f"camera {self.lane_id}")

    async def stop(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
        await self.barrier.stop()
        if self.display:
            await self.display.stop()

    # -- the camera -----------------------------------------------------------------------------

    def _heard(self) -> None:
        self.camera_heard = time.monotonic()
        if not self.camera_online:
            self.camera_online = True
            self.agent.record(self.camera_id, "device_online", {})

    async def _watch_camera(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.camera_silence_s / 4))
            silent = time.monotonic() - self.camera_heard
            if self.camera_online and silent > self.config.camera_silence_s:
                self.camera_online = False
                self.agent.record(self.camera_id, "device_offline", {"error": f"no frame or heartbeat for {silent:.0f} s"})

    async def on_camera(self, request: dict) -> dict:
        """One line from the camera: a read, a frame, or a heartbeat."""
        self._heard()
        if request.get("heartbeat"):
            return {"lane_id": self.lane_id, "heartbeat": True}
        if "frame_b64" in request:
            from edge import lpr
            try:
                frame = base64.b64decode(request["frame_b64"], validate=True)
                started = time.perf_counter()
                reads = await asyncio.to_thread(lpr.read_frame, frame)
            except (binascii.Error, ValueError, TypeError) as exc:   # lpr.FrameError is a ValueError
                self.agent.record(self.camera_id, "frame_rejected", {"lane_id": self.lane_id, "error": str(exc)[:500]})
                return {"lane_id": self.lane_id, "error": f"frame rejected: {exc}"}
            if not reads:
                return {"lane_id": self.lane_id, "plate": None, "reason": "no_plate",
                        "recognition_ms": round((time.perf_counter() - started) * 1000, 1)}
            best = reads[0]
            crop = _crop_jpeg_b64(frame, best.box) if best.confidence < 1 else None
            reply = await self.decide(best.text, best.confidence, crop)
            return {**reply, "recognition_ms": round(best.ms, 1)}
        return await self.decide(str(request["plate"]), float(request.get("confidence", 1.0)),
                                 request.get("crop_jpeg_b64"))

    # -- the decision -----------------------------------------------------------------------------

    async def decide(self, read: str, confidence: float, crop_jpeg_b64: str | None = None) -> dict:
        started = time.perf_counter()
        lots, lanes = self.agent.parking_lots, self.agent.parking_lanes
        lot, lane = lots.get(self.lot_id), lanes.get(self.lane_id)
        if lot is None or lane is None:
            return {"lane_id": self.lane_id, "error": "this lane or its lot is not set up at the centre yet"}
        policy = rules.LanePolicy(**json.loads(lane.policy_json))
        try:
            plate = rules.normalize_plate(read)
        except ValueError:
            plate, confidence = read[:16], 0.0          # no plausible plate: a person looks at it
        now_unix, _trusted = self.agent.clock.now()
        now = datetime.fromtimestamp(now_unix, UTC)
        today = now.astimezone(ZoneInfo(lot.timezone)).date()
        rights = SyncedRights(self.agent.store, self.lot_id)
        session = self.agent.store.lane_session(self.lot_id, plate)
        online = self.agent.link.online
        base = {"lot_id": self.lot_id, "lane_id": self.lane_id, "plate": plate, "confidence": f"{confidence:.3f}"}
        exiting = lane.direction == "exit" or (lane.direction == "both" and session is not None)
        if confidence < policy.low_confidence:
            crop = {"crop_jpeg_b64": crop_jpeg_b64} if crop_jpeg_b64 and len(crop_jpeg_b64) <= MAX_CROP_B64 else {}
            self.agent.record(self.camera_id, "plate_unconfirmed", {**base, **crop})
            await self._show(plate, None, "confirm_with_guard")
            return self._reply(plate, False, "low_confidence", started)
        if not exiting:
            d = rules.entry_decision(plate, confidence, rights, today, self.agent.store.shared_occupied(self.lot_id),
                                     lot.shared_capacity, online, policy, inside=session is not None,
                                     tolerate_province=lot.tolerate_province)
            if not d.open:
                self.agent.record(self.camera_id, "vehicle_refused", {**base, "reason": d.reason, "kind": d.kind})
                await self._show(plate, None, d.message)
                return self._reply(plate, False, d.reason, started)
            opened = await self._open(base)
            acted = time.perf_counter()
            if opened:
                entry = None if d.reason == "already_inside" else (self.lot_id, plate, d.takes_space)
                self.agent.record(self.camera_id, "vehicle_entered", {**base, "reason": d.reason, "kind": d.kind},
                                  lane_entry=entry)
            await self._show(plate, None, d.message)
            return self._reply(plate, opened, d.reason, started, acted)
        right, _ = rules.find_right(plate, rights, lot.tolerate_province)
        tariff = rules.Tariff(**json.loads(lot.tariff_json))
        entered = datetime.fromtimestamp(session["entered_at"], UTC) if session else None
        paid_until = datetime.fromtimestamp(session["paid_until"], UTC) if session and session["paid_until"] else None
        d = rules.exit_decision(right, entered, max(now, entered or now), session["paid_fen"] if session else 0,
                                paid_until, tariff, lot.timezone, online, policy, confidence, today)
        if not d.open:
            self.waiting[plate] = confidence
            self.agent.record(self.camera_id, "exit_waiting", {**base, "reason": d.reason, "fee_fen": d.fee_fen})
            await self._show(plate, d.fee_fen or None, d.message)
            return {**self._reply(plate, False, d.reason, started), "fee_fen": d.fee_fen}
        self.waiting.pop(plate, None)
        opened = await self._open(base)
        acted = time.perf_counter()
        if opened:
            self.agent.record(self.camera_id, "vehicle_exited", {**base, "reason": d.reason, "fee_fen": d.fee_fen},
                              lane_exit=(self.lot_id, plate))
        await self._show(plate, d.fee_fen or None, d.message)
        return {**self._reply(plate, opened, d.reason, started, acted), "fee_fen": d.fee_fen}

    async def on_paid(self, plate: str, paid_fen: int, paid_until: float) -> dict | None:
        """The centre recorded a payment: an exit waiting for this car opens now."""
        self.agent.store.lane_paid(self.lot_id, plate, paid_fen, paid_until)
        if plate in self.waiting:
            return await self.decide(plate, self.waiting[plate])
        return None

    async def _open(self, base: dict) -> bool:
        try:
            await self.barrier.open()
            return True
        except DeviceOffline as exc:
            self.agent.record(self.barrier_id, "lane_open_failed", {**base, "error": str(exc)})
            return False

    async def _show(self, plate: str, fee_fen: int | None, message: str) -> None:
        if self.display is None:
            return
        try:
            await self.display.show(plate, fee_fen, DISPLAY_MESSAGES.get(message, message))
        except (DeviceOffline, ValueError) as exc:
            log.warning("display not updated", extra={"lane_id": self.lane_id, "error": str(exc)})

    def _reply(self, plate: str, opened: bool, reason: str, started: float, acted: float | None = None) -> dict:
        """`ms`: from the read to the barrier's open command acknowledged (or to the refusal)."""
        return {"lane_id": self.lane_id, "plate": plate, "opened": opened, "reason": reason,
                "offline": not self.agent.link.online,
                "ms": round(((acted or time.perf_counter()) - started) * 1000, 3)}
