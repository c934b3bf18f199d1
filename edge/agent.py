"""The site agent: one asyncio process per site, deciding its gates alone.

It drives the site's turnstiles over Modbus, decides each presented card from its own synced
copy of the credentials (online or not), writes every event to its outbox first, and keeps
the centre up to date through edgelink when it can.

Card readers reach the agent on its local reader port: one JSON object a line,
{"device_id": "t1", "card_number": "10001"}, answered with the decision. (In the field a
Wiegand/OSDP-to-TCP bridge at each reader speaks this line protocol.)

Run: gatehouse agent run SITE.yaml
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import time

from edge.config import LoadedSite
from edge.drivers.turnstile import DeviceOffline, TurnstileDriver
from edge.link import CentreLink
from edge.store import EdgeStore
from gatehouse.edge.v1 import edge_pb2 as pb
from services.access import rules

log = logging.getLogger("edge.agent")


class Agent:
    def __init__(self, loaded: LoadedSite, durable: bool = True):
        self.loaded = loaded
        site = loaded.site
        self.store = EdgeStore(loaded.data_dir / "agent.db", durable=durable)
        self.gate_of = {d.device_id: d.gate_id for d in site.devices}
        self.drivers: dict[str, TurnstileDriver] = {
            d.device_id: TurnstileDriver(d.device_id, loaded.profiles[d.device_id], d.host, d.port,
                                         on_event=self._device_event_handler(d.device_id))
            for d in site.devices}
        self.link = CentreLink(site.edgelink, site.agent_id, loaded.secret, site.site_id, self.store,
                               [pb.Device(device_id=d.device_id, kind=loaded.profiles[d.device_id].kind,
                                          gate_id=d.gate_id, model=loaded.profiles[d.device_id].model)
                                for d in site.devices],
                               on_command=self.on_command, upload_batch=site.upload_batch)
        self.outbox_alarm_at = site.outbox_alarm_at
        self._outbox_alarm = False
        self._reader_server = None

    # -- events ---------------------------------------------------------------------------------

    def record(self, device_id: str, kind: str, attributes: dict | None = None) -> dict:
        """Commit an event to the outbox (before anything else happens to it) and wake the uploader."""
        event = self.store.append_event(device_id, self.gate_of.get(device_id, ""), kind, attributes or {},
                                        offline=not self.link.online)
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

    def _device_event_handler(self, device_id: str):
        def handle(kind: str, attributes: dict) -> None:
            log.info("device event", extra={"device_id": device_id, "kind": kind, **attributes})
            self.record(device_id, kind, attributes)
        return handle

    # -- decisions ------------------------------------------------------------------------------

    async def present(self, device_id: str, card_number: str) -> dict:
        """A card at a reader: decide from the local copy, record, and unlock if granted."""
        started = time.perf_counter()
        if device_id not in self.drivers:
            return {"error": f"unknown device {device_id!r}"}
        credential = self.store.credential(card_number)
        decision = rules.decide(credential, self.gate_of[device_id], time.time())
        attributes = {"card_number": card_number, "reason": decision.reason,
                      "person_id": credential.person_id if credential else None}
        event = self.record(device_id, "access_granted" if decision.granted else "access_denied", attributes)
        unlocked = False
        if decision.granted:
            try:
                await self.drivers[device_id].unlock()
                unlocked = True
            except DeviceOffline as exc:
                self.record(device_id, "unlock_failed", {"card_number": card_number, "error": str(exc)})
        return {"device_id": device_id, "card_number": card_number, "granted": decision.granted,
                "reason": decision.reason, "unlocked": unlocked, "offline": event["offline"],
                "event_id": event["event_id"], "ms": round((time.perf_counter() - started) * 1000, 3)}

    async def on_command(self, command: pb.Command) -> None:
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
                    reply = await self.present(str(request["device_id"]), str(request["card_number"]))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"error": f"expected {{\"device_id\": ..., \"card_number\": ...}}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for driver in self.drivers.values():
            await driver.start()
        await self.link.start()
        host, port = self.loaded.site.reader_listen.rsplit(":", 1)
        self._reader_server = await asyncio.start_server(self._serve_reader, host, int(port))
        log.info("agent started", extra={"site_id": self.loaded.site.site_id, "reader": self.loaded.site.reader_listen,
                                         "devices": list(self.drivers), "cached_credentials": self.store.credential_count()})

    async def stop(self) -> None:
        if self._reader_server is not None:
            self._reader_server.close()
            await self._reader_server.wait_closed()
        await self.link.stop()
        for driver in self.drivers.values():
            await driver.stop()
        self.store.close()


async def run(loaded: LoadedSite) -> None:
    agent = Agent(loaded)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await agent.stop()
