"""The site agent: one asyncio process per site, deciding its gates alone.

It drives the site's turnstiles over Modbus, decides each presented card from its own synced
copy of the credentials (online or not), writes every event to its outbox first, and keeps
the centre up to date through edgelink when it can.

Readers reach the agent on its local reader port: one JSON object a line, answered with the
decision: {"device_id": "t1", "card_number": "10001"}, or "pin": "123456" for a keypad, or
"qr": "GH1...." for a QR scanner. (In the field a Wiegand/OSDP-to-TCP bridge at each reader
speaks this line protocol.)

How current the agent's data is: while the sync stream is live the centre repeats "caught up"
every few seconds. Data older than `sync_grace_s` is stale: once the centre answers again, a
decision waits (up to `sync_wait_s`) for the sync to catch up, so a card revoked while the
agent was away is refused right after it reconnects; while the centre stays unreachable, only
the person kinds in `stale_allow_kinds` (residents and staff by default) still pass.

Run: gatehouse agent run SITE.yaml
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import time
from datetime import datetime

from edge.clock import TrustedClock
from edge.config import LoadedSite
from edge.drivers.turnstile import DeviceOffline, TurnstileDriver
from edge.lane import LaneRunner
from edge.link import CentreLink
from edge.store import EdgeStore
from gatehouse.edge.v1 import edge_pb2 as pb
from services.access import qr, rules

log = logging.getLogger("edge.agent")
CHECKPOINT_EVERY_S = 1.0
MAX_READER_LINE = 32 << 20    # a camera frame of up to 20 MB, in base64, on one line


class Agent:
    def __init__(self, loaded: LoadedSite, durable: bool = True, clock: TrustedClock | None = None):
        self.loaded = loaded
        site = loaded.site
        self.store = EdgeStore(loaded.data_dir / "agent.db", durable=durable)
        self.clock = clock or TrustedClock(self.store.get_meta, self.store.set_meta)
        self.gate_of = {d.device_id: d.gate_id for d in site.devices}
        self.stale_allow = {d.device_id: frozenset(d.stale_allow_kinds or site.stale_allow_kinds)
                            for d in site.devices}
        self.policy, self.qr_keys = self.store.policy()
        self.fresh_at = float(self.store.get_meta("fresh_at") or 0)   # trusted time the data was last current
        self._fresh_saved_at = 0.0
        self.emergency_inputs: set[str] = set()     # devices whose emergency input is active
        self.emergency = False
        self.drivers: dict[str, TurnstileDriver] = {
            d.device_id: TurnstileDriver(d.device_id, loaded.profiles[d.device_id], d.host, d.port,
                                         on_event=self.device_event_handler(d.device_id))
            for d in site.devices}
        self.parking_lots, self.parking_lanes = self.store.parking()
        self.lanes: dict[str, LaneRunner] = {
            lane.lane_id: LaneRunner(lane, *loaded.lane_profiles[lane.lane_id], self) for lane in site.lanes}
        for runner in self.lanes.values():
            self.gate_of.update({device_id: runner.lane_id for device_id in runner.device_ids})
        self.link = CentreLink(site.edgelink, site.agent_id, loaded.secret, site.site_id, self.store,
                               [pb.Device(device_id=d.device_id, kind=loaded.profiles[d.device_id].kind,
                                          gate_id=d.gate_id, model=loaded.profiles[d.device_id].model)
                                for d in site.devices]
                               + [pb.Device(device_id=f"{lane.lane_id}.barrier", kind="barrier", gate_id=lane.lane_id,
                                            model=loaded.lane_profiles[lane.lane_id][0].model) for lane in site.lanes],
                               on_command=self.on_command, upload_batch=site.upload_batch,
                               on_synced=self.on_synced, on_server_time=self.clock.anchor)
        self.outbox_alarm_at = site.outbox_alarm_at
        self._outbox_alarm = False
        self._reader_server = None
        self._checkpointer: asyncio.Task | None = None

    # -- events ---------------------------------------------------------------------------------

    def record(self, device_id: str, kind: str, attributes: dict | None = None, **writes) -> dict:
        """Commit an event to the outbox (before anything else happens to it) and wake the uploader."""
        event = self.store.append_event(device_id, self.gate_of.get(device_id, ""), kind, attributes or {},
                                        offline=not self.link.online, at=self.clock.now()[0], **writes)
        self.link.outbox_changed.set()
        self._check_outbox(device_id)
        return event

    def _check_outbox(self, device_id: str) -> None:
        size = self.store.outbox_depth()
        if not self._outbox_alarm and size >= self.outbox_alarm_at:
            self._outbox_alarm = True
            log.error("outbox is full past its alarm level; nothing is discarded", extra={"outbox": size})
            self.store.append_event(device_id, self.gate_of.get(device_id, ""), "outbox_high_water",
                                    {"size": size, "alarm_at": self.outbox_alarm_at}, offline=not self.link.online)
        elif self._outbox_alarm and size < self.outbox_alarm_at // 2:
            self._outbox_alarm = False

    def device_event_handler(self, device_id: str):
        def handle(kind: str, attributes: dict) -> None:
            log.info("device event", extra={"device_id": device_id, "kind": kind, **attributes})
            self.record(device_id, kind, attributes)
            if kind in ("emergency_input_on", "emergency_input_off"):
                # the fire panel's input frees the exits at once, centre or no centre
                (self.emergency_inputs.add if kind.endswith("_on") else self.emergency_inputs.discard)(device_id)
                self._apply_emergency()
        return handle

    # -- site data and emergency ----------------------------------------------------------------

    def on_synced(self, policy_changed: bool, caught_up: bool) -> None:
        """After each applied sync batch (called by the link)."""
        if policy_changed:
            self.policy, self.qr_keys = self.store.policy()
            self.parking_lots, self.parking_lanes = self.store.parking()
            self._apply_emergency()
        if caught_up:
            self.fresh_at = self.clock.now()[0]
            if self.fresh_at - self._fresh_saved_at >= 30:
                self.store.set_meta("fresh_at", repr(self.fresh_at))
                self._fresh_saved_at = self.fresh_at

    def _apply_emergency(self) -> None:
        active = self.policy.emergency or bool(self.emergency_inputs)
        if active == self.emergency:
            return
        self.emergency = active
        source = "input:" + ",".join(sorted(self.emergency_inputs)) if self.emergency_inputs else "centre"
        log.warning("emergency mode %s", "on: exits free" if active else "off", extra={"source": source})
        for device_id, driver in self.drivers.items():
            self.record(device_id, "emergency_mode_on" if active else "emergency_mode_off", {"source": source})
            if driver.profile.points.free_exit is not None:
                asyncio.get_running_loop().create_task(self._set_free_exit(device_id, active))
        for runner in self.lanes.values():   # every barrier up, and kept up, until it is over
            self.record(runner.barrier_id, "emergency_mode_on" if active else "emergency_mode_off", {"source": source})
            asyncio.get_running_loop().create_task(self._hold_barrier(runner, active))

    async def _hold_barrier(self, runner, held: bool) -> None:
        try:
            await runner.barrier.hold_open(held)
        except DeviceOffline as exc:   # the driver keeps the wish; its next poll raises the arm
            log.warning("barrier not reached for emergency", extra={"device_id": runner.barrier_id, "error": str(exc)})

    async def _set_free_exit(self, device_id: str, active: bool) -> None:
        try:
            await self.drivers[device_id].set_free_exit(active)
        except DeviceOffline as exc:
            # the driver keeps the wish and writes it when the controller is back
            self.record(device_id, "free_exit_failed", {"active": active, "error": str(exc)})

    def data_age(self, now: float) -> float:
        return now - self.fresh_at if self.fresh_at else float("inf")

    # -- decisions ------------------------------------------------------------------------------

    async def present(self, device_id: str, card_number: str | None = None, pin: str | None = None,
                      qr_code: str | None = None) -> dict:
        """A card, PIN or QR code at a reader: decide from the local copy, record, unlock if granted."""
        started = time.perf_counter()
        if device_id not in self.drivers:
            return {"error": f"unknown device {device_id!r}"}
        gate_id = self.gate_of[device_id]
        now, trusted = self.clock.now()
        if self.data_age(now) > self.loaded.site.sync_grace_s and (self.link.syncing or self.link.online):
            # back in touch after a long time: old data must not open for a since-revoked card
            try:
                await asyncio.wait_for(self.link.caught_up.wait(), self.loaded.site.sync_wait_s)
            except TimeoutError:
                pass
            now, trusted = self.clock.now()
        key, credential, refusal = self._resolve(card_number, pin, qr_code, now)
        stale = self.data_age(now) > self.loaded.site.sync_grace_s
        if refusal:
            decision = rules.Decision(False, refusal)
        elif stale and credential is not None and credential.person_kind not in self.stale_allow[device_id]:
            decision = rules.Decision(False, "data_stale")
        else:
            zone = self.policy.zone_at.get(gate_id)
            passback = self.store.passback(credential.person_id, zone[0].zone_id) if zone and credential else None
            uses = self.store.local_uses(key) if credential and credential.max_uses else 0
            decision = rules.decide(credential, gate_id, now, self.policy, passback, uses, trusted)
        attributes = {"card_number": key, "reason": decision.reason,
                      "person_id": credential.person_id if credential else None,
                      "credential": "qr" if qr_code else "pin" if pin else "card",
                      "zone_id": decision.zone_id or None, "direction": decision.direction or None,
                      "stale": "1" if stale else None, "clock_trusted": None if trusted else "0"}
        writes = {}
        if decision.granted and decision.zone_id:
            writes["passback"] = (credential.person_id, decision.zone_id, decision.direction)
        if decision.granted and credential.max_uses:
            writes["count_use"] = key
        event = self.record(device_id, "access_granted" if decision.granted else "access_denied", attributes,
                            **writes)
        if decision.alarm:
            self.record(device_id, decision.alarm, {"card_number": key, "person_id": credential.person_id,
                                                    "zone_id": decision.zone_id})
        decided_ms = (time.perf_counter() - started) * 1000
        unlocked = False
        if decision.granted:
            try:
                await self.drivers[device_id].unlock()
                unlocked = True
            except DeviceOffline as exc:
                self.record(device_id, "unlock_failed", {"card_number": key, "error": str(exc)})
        return {"device_id": device_id, "card_number": key if not pin else "(PIN)", "granted": decision.granted,
                "reason": decision.reason, "alarm": decision.alarm or None, "unlocked": unlocked,
                "offline": event["offline"], "event_id": event["event_id"],
                "decided_ms": round(decided_ms, 3), "ms": round((time.perf_counter() - started) * 1000, 3)}

    def _resolve(self, card_number, pin, qr_code, now) -> tuple[str, rules.Credential | None, str]:
        """(credential key, credential, refusal reason or "")."""
        if pin is not None:
            key = rules.pin_key(self.loaded.site.site_id, str(pin))
            return key, self.store.credential(key), ""
        if qr_code is None:
            key = rules.card_key(card_number)
            return key, self.store.credential(key), ""
        try:
            claims = qr.verify(qr_code.strip(), self.qr_keys, self.loaded.site.site_id)
        except qr.InvalidCode as exc:
            return "qr", None, f"qr_{exc.reason}"
        key = str(claims.get("sub", ""))
        if now < claims.get("from", 0):
            return key, None, "qr_not_yet_valid"
        if now >= claims.get("until", 0):
            return key, None, "qr_expired"
        credential = self.store.credential(key)
        if credential is None and key.startswith("visitor:"):
            # a pass signed by the centre but not synced here yet: its own claims say enough
            credential = rules.Credential(key, key.removeprefix("visitor:"), str(claims.get("name", "")), rules.ACTIVE,
                                          int(claims["from"]), int(claims["until"]),
                                          gate_ids=frozenset(claims.get("gates", ())), person_kind=rules.VISITOR,
                                          max_uses=int(claims.get("uses", 0)))
        if credential is None:
            return key, None, "unknown_card"
        return key, credential, ""

    async def on_command(self, command: pb.Command) -> None:
        if command.kind == "read_confirmed":
            runner = self.lanes.get(command.attributes.get("lane_id", ""))
            if runner is not None:      # the operator read the plate: the lane decides with it
                await runner.decide(command.attributes["plate"], 1.0)
            return
        if command.kind == "exit_paid":
            a = command.attributes
            paid_until = datetime.fromisoformat(a["paid_until"]).timestamp()
            for runner in self.lanes.values():
                if runner.lot_id == command.gate_id:
                    await runner.on_paid(a["plate"], int(a.get("paid_fen", 0)), paid_until)
            return
        if command.kind != "open":
            log.warning("unknown command", extra={"kind": command.kind, "command_id": command.command_id})
            return
        for device_id, gate_id in self.gate_of.items():
            if gate_id != command.gate_id:
                continue
            attributes = {"command_id": command.command_id, "requested_by": command.requested_by,
                          "reason": command.reason}
            self.record(device_id, "remote_open", attributes)
            try:
                await self.drivers[device_id].unlock()
            except DeviceOffline as exc:
                self.record(device_id, "unlock_failed", {**attributes, "error": str(exc)})

    # -- the reader port ------------------------------------------------------------------------

    async def _serve_reader(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if isinstance(request, dict) and "lane_id" in request:
                        reply = await self._camera(request)
                        writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                        await writer.drain()
                        continue
                    reply = await self.present(*_reader_request(request))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"error": f"expected {{\"device_id\": ..., and one of \"card_number\", \"pin\", "
                                      f"\"qr\"}}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        except (ValueError, asyncio.LimitOverrunError):     # a line over MAX_READER_LINE: say so, hang up
            writer.write(json.dumps({"error": f"a request is at most {MAX_READER_LINE} bytes a line"}).encode() + b"\n")
        finally:
            writer.close()

    # -- life cycle -----------------------------------------------------------------------------

    async def _camera(self, request: dict) -> dict:
        runner = self.lanes.get(str(request["lane_id"]))
        if runner is None:
            return {"error": f"unknown lane {request['lane_id']!r}"}
        try:
            return await runner.on_camera(request)
        except (KeyError, TypeError, ValueError) as exc:
            return {"lane_id": runner.lane_id, "error": f"expected plate (+confidence), frame_b64 or heartbeat: {exc}"}

    async def start(self) -> None:
        for driver in self.drivers.values():
            await driver.start()
        for runner in self.lanes.values():
            await runner.start()
        await self.link.start()
        host, port = self.loaded.site.reader_listen.rsplit(":", 1)
        self._reader_server = await asyncio.start_server(self._serve_reader, host, int(port), limit=MAX_READER_LINE)
        self._apply_emergency()
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="checkpoint")
        log.info("agent started", extra={"site_id": self.loaded.site.site_id, "reader": self.loaded.site.reader_listen,
                                         "devices": list(self.drivers), "cached_credentials": self.store.credential_count()})

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                await asyncio.to_thread(self.store.checkpoint)
            except sqlite3.Error as exc:
                log.warning("checkpoint failed; will retry", extra={"error": str(exc)})

    async def stop(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        if self._reader_server is not None:
            self._reader_server.close()
            await self._reader_server.wait_closed()
        await self.link.stop()
        for driver in self.drivers.values():
            await driver.stop()
        for runner in self.lanes.values():
            await runner.stop()
        self.store.close()


def _reader_request(request: dict) -> tuple[str, str | None, str | None, str | None]:
    if not isinstance(request, dict):
        raise TypeError("a JSON object")
    given = [k for k in ("card_number", "pin", "qr") if request.get(k) not in (None, "")]
    if len(given) != 1:
        raise ValueError("exactly one credential")
    return (str(request["device_id"]), *(str(request[k]) if k in given else None for k in ("card_number", "pin", "qr")))


async def run(loaded: LoadedSite) -> None:
    agent = Agent(loaded)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await agent.stop()
