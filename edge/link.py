"""The agent's connection to the centre: hello, live sync, event upload, command stream.

Each part retries with backoff on its own; the agent decides gates whether or not it is up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from edge.backoff import Backoff
from edge.store import EdgeStore
from gatehouse import __version__
from gatehouse.edge.v1 import edge_pb2 as pb
from gatehouse.edge.v1 import edge_pb2_grpc as pb_grpc

log = logging.getLogger("edge.link")
APPLY_CHUNK = 200   # sync changes applied per transaction: ~1-2 ms, so a decision never waits long


def _event_message(e: dict) -> pb.EdgeEvent:
    ts = Timestamp()
    ts.FromNanoseconds(int(e["device_time"] * 1e9))
    return pb.EdgeEvent(event_id=e["event_id"], device_id=e["device_id"], gate_id=e["gate_id"], kind=e["kind"],
                        device_seq=e["device_seq"], device_time=ts, offline=e["offline"],
                        attributes=e["attributes"])


class CentreLink:
    def __init__(self, address: str, agent_id: str, secret: str, site_id: str, store: EdgeStore,
                 devices: list[pb.Device], on_command: Callable[[pb.Command], Awaitable[None]],
                 upload_batch: int = 500,
                 on_synced: Callable[[bool, bool], None] = lambda policy_changed, caught_up: None,
                 on_server_time: Callable[[float], None] = lambda unix: None):
        self.address, self.site_id, self.store, self.devices = address, site_id, store, devices
        self.metadata = (("x-agent-id", agent_id), ("x-agent-secret", secret))
        self.on_command = on_command
        self.on_synced = on_synced
        self.on_server_time = on_server_time
        self.syncing = False          # the centre answered Hello and the sync stream is open
        self.caught_up = asyncio.Event()   # set while the copy is known to be complete
        self.centre_back = asyncio.Event()  # set when a call works again: the others retry at once
        self.upload_batch = upload_batch
        self.outbox_changed = asyncio.Event()
        self.online = False          # the last call to the centre worked
        self.synced_at = 0.0         # monotonic time the projection was last known complete
        self.channel = None
        self._tasks: list[asyncio.Task] = []

    def _set_online(self, value: bool, why: str = "") -> None:
        if value != self.online:
            self.online = value
            if value:
                self.centre_back.set()
            else:
                self.centre_back.clear()
            log.info("centre link %s", "up" if value else "down", extra={"reason": why})

    async def start(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address, options=[
            ("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000)])
        self.stub = pb_grpc.EdgeLinkStub(self.channel)
        self._tasks = [asyncio.create_task(self._sync_loop(), name="sync"),
                       asyncio.create_task(self._upload_loop(), name="upload"),
                       asyncio.create_task(self._command_loop(), name="commands")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()

    # -- sync ---------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                now = Timestamp()
                now.GetCurrentTime()
                reply = await self.stub.Hello(pb.HelloRequest(site_id=self.site_id, software_version=__version__,
                                                              devices=self.devices, agent_time=now),
                                              metadata=self.metadata, timeout=5)
                self.on_server_time(reply.server_time.ToNanoseconds() / 1e9)
                self.caught_up.clear()
                self.syncing = True
                epoch, cursor = self.store.position
                stream = self.stub.Sync(pb.SyncRequest(cursor=cursor, epoch=epoch, follow=True),
                                        metadata=self.metadata)
                async for batch in stream:
                    policy_changed = False
                    if batch.changes or batch.epoch != epoch:
                        changes = batch.changes
                        for start in range(0, max(len(changes), 1), APPLY_CHUNK):
                            last = start + APPLY_CHUNK >= len(changes)
                            policy_changed |= self.store.apply_changes(changes[start:start + APPLY_CHUNK],
                                                                       batch.cursor if last else None, batch.epoch)
                            if not last:
                                await asyncio.sleep(0)   # let decisions waiting on the loop go first
                        epoch = batch.epoch
                    if batch.caught_up:
                        self.synced_at = time.monotonic()
                        self.caught_up.set()
                    self.on_synced(policy_changed, batch.caught_up)
                    self._set_online(True)
                    backoff.reset()
                self.syncing = False
            except grpc.aio.AioRpcError as exc:
                self.syncing = False
                self.caught_up.clear()
                self._set_online(False, f"sync: {exc.code().name}: {exc.details()}")
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the centre refused this agent's secret", extra={"detail": exc.details()})
            await backoff.sleep(self.centre_back)

    # -- upload ---------------------------------------------------------------------------------

    async def _upload_loop(self) -> None:
        backoff = Backoff()
        while True:
            events = self.store.pending(self.upload_batch)
            if not events:
                self.outbox_changed.clear()
                try:
                    await asyncio.wait_for(self.outbox_changed.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                continue
            try:
                ack = await self.stub.ReportEvents(pb.EventBatch(events=[_event_message(e) for e in events]),
                                                   metadata=self.metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("centre refused events as invalid; kept in the rejected table",
                              extra={"detail": exc.details(), "events": len(events)})
                    self.store.quarantine(events, exc.details() or "")
                    continue
                self._set_online(False, f"upload: {exc.code().name}")
                await backoff.sleep()
                continue
            self.store.acknowledge(list(ack.accepted_event_ids))
            self._set_online(True)
            backoff.reset()

    # -- commands -------------------------------------------------------------------------------

    async def _command_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async for command in self.stub.Commands(pb.CommandsRequest(), metadata=self.metadata):
                    backoff.reset()
                    await self.on_command(command)
            except grpc.aio.AioRpcError:
                pass
            await backoff.sleep(self.centre_back)
