"""edgelink: the gRPC server edge agents talk to (plain grpcio, threads, no eventlet).

It authenticates agents, streams each site's projection from a cursor, turns reported edge
events into the nameko event `edgelink.edge_events_reported` (published with a broker
confirm before the agent is acknowledged), and pushes commands down to connected agents.

Run: python -m services.edgelink.server
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent import futures
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse import logs, settings
from gatehouse.bus import ConfirmedPublisher, EventConsumer, Undeliverable, event_payload
from gatehouse.db import engine_for
from gatehouse.edge.v1 import edge_pb2 as pb
from gatehouse.grpcparse import Malformed, parser
from services.edgelink import agents, validate
from services.edgelink.projection import Projection

log = logging.getLogger("edgelink")

SERVICE = "gatehouse.edge.v1.EdgeLink"
SYNC_BATCH = 1000
SYNC_IDLE_S = 2.0         # an idle follow stream repeats "caught up" this often
HEARTBEAT_S = 2.0
SNAPSHOT_RETRY_S = 30.0
# Each connected agent holds two long-lived streams (Sync, Commands), each on a pool thread.
# This many threads stay free for unary calls (Hello, ReportEvents), whatever the streams do.
RESERVED_FOR_CALLS = 16
DEFAULT_WORKERS = 512     # room for (512 - 16) / 2 = 248 connected agents


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


class CommandHub:
    """Commands for connected agents, fanned out per site."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[queue.Queue]] = {}

    def subscribe(self, site_id: str) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._subscribers.setdefault(site_id, set()).add(q)
        return q

    def unsubscribe(self, site_id: str, q: queue.Queue) -> None:
        with self._lock:
            self._subscribers.get(site_id, set()).discard(q)

    def publish(self, site_id: str, command: pb.Command) -> int:
        with self._lock:
            targets = list(self._subscribers.get(site_id, ()))
        for q in targets:
            q.put(command)
        return len(targets)


class EdgeLink:
    def __init__(self, engine, publisher: ConfirmedPublisher, workers: int = DEFAULT_WORKERS):
        self.engine = engine
        self.publisher = publisher
        self.projection = Projection(engine)
        self.auth = agents.Authenticator(engine)
        self.commands = CommandHub()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.last_seen: dict[str, float] = {}       # agent_id -> time of its last call
        self.streams: dict[str, int] = {}            # agent_id -> open Sync/Commands streams
        self.gates_of: dict[str, list[str]] = {}     # agent_id -> gates its devices serve (from Hello)
        self.max_streams = max(1, workers - RESERVED_FOR_CALLS)

    # -- plumbing -------------------------------------------------------------------------------

    def _agent(self, request, context) -> tuple[str, str]:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        meta = dict(context.invocation_metadata())
        agent_id, secret = meta.get("x-agent-id", ""), meta.get("x-agent-secret", "")
        site_id = self.auth.site_of(agent_id, secret) if agent_id and secret else None
        if site_id is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown agent or wrong secret")
        with self._lock:
            self.last_seen[agent_id] = time.time()
        return agent_id, site_id

    def _open_stream(self, agent_id: str, context) -> None:
        with self._lock:
            full = sum(self.streams.values()) >= self.max_streams
            if not full:
                self.streams[agent_id] = self.streams.get(agent_id, 0) + 1
        if full:
            log.error("stream capacity reached", extra={"agent_id": agent_id, "max_streams": self.max_streams})
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"edgelink holds its maximum of {self.max_streams} streams; retry later "
                          "(operators: raise EDGELINK_WORKERS)")

    def _close_stream(self, agent_id: str) -> None:
        with self._lock:
            self.streams[agent_id] -= 1

    # -- rpcs -------------------------------------------------------------------------------------

    def Hello(self, request, context):
        agent_id, site_id = self._agent(request, context)
        if request.site_id and request.site_id != site_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"agent {agent_id} is registered for site {site_id}, not {request.site_id}")
        log.info("agent hello", extra={"agent_id": agent_id, "site_id": site_id,
                                       "devices": [d.device_id for d in request.devices]})
        with self._lock:
            self.gates_of[agent_id] = sorted({d.gate_id for d in request.devices})
        epoch, version = self.projection.position(site_id)
        return pb.HelloReply(site_id=site_id, server_time=_ts(datetime.now(UTC)), latest_version=version, epoch=epoch)

    def Sync(self, request, context):
        agent_id, site_id = self._agent(request, context)
        epoch, _ = self.projection.position(site_id)
        # a cursor from another epoch (a rebuilt or restored projection) means nothing here
        cursor = request.cursor if request.epoch == epoch else 0
        self._open_stream(agent_id, context)
        try:
            caught_up_sent, idle_since = False, time.monotonic()
            while context.is_active() and not self.stopping.is_set():
                if not epoch:   # the site's projection did not exist yet; it may now
                    epoch, _ = self.projection.position(site_id)
                generation = self.projection.generation
                changes = self.projection.changes_since(site_id, cursor, SYNC_BATCH)
                if changes:
                    cursor = changes[-1].version
                    caught_up = len(changes) < SYNC_BATCH
                    yield pb.SyncBatch(cursor=cursor, caught_up=caught_up, epoch=epoch, changes=changes)
                    caught_up_sent, idle_since = caught_up, time.monotonic()
                    continue
                # caught up: say so once, then again every SYNC_IDLE_S, so that the agent knows
                # its copy is current (and how old it is once it stops hearing this)
                if not caught_up_sent or time.monotonic() - idle_since >= SYNC_IDLE_S:
                    yield pb.SyncBatch(cursor=cursor, caught_up=True, epoch=epoch)
                    caught_up_sent, idle_since = True, time.monotonic()
                if not request.follow:
                    return
                self.projection.wait_for_change(generation, timeout=SYNC_IDLE_S)
        finally:
            self._close_stream(agent_id)

    def ReportEvents(self, request, context):
        agent_id, site_id = self._agent(request, context)
        try:
            validate.check_batch(request, request.ByteSize())
        except validate.Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        received_at = datetime.now(UTC)
        batch = event_payload(site_id, agent_id=agent_id, received_at=received_at.isoformat(), events=[{
            "event_id": e.event_id, "device_id": e.device_id, "gate_id": e.gate_id, "kind": e.kind,
            "device_seq": e.device_seq, "device_time": e.device_time.ToDatetime(UTC).isoformat(),
            "offline": e.offline, "attributes": dict(e.attributes)} for e in request.events])
        try:
            self.publisher.publish("edge_events_reported", batch)
        except Undeliverable as exc:
            log.warning("events not accepted", extra={"agent_id": agent_id, "error": str(exc)})
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the centre cannot take events now, retry: {exc}")
        return pb.EventAck(accepted_event_ids=[e.event_id for e in request.events], received_at=_ts(received_at))

    def Commands(self, request, context):
        agent_id, site_id = self._agent(request, context)
        self._open_stream(agent_id, context)
        q = self.commands.subscribe(site_id)
        try:
            while context.is_active() and not self.stopping.is_set():
                try:
                    yield q.get(timeout=1.0)
                except queue.Empty:
                    continue
        finally:
            self.commands.unsubscribe(site_id, q)
            self._close_stream(agent_id)

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        stream = grpc.unary_stream_rpc_method_handler
        ser = lambda m: m.SerializeToString()  # noqa: E731
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Hello": unary(self.Hello, parser(pb.HelloRequest), ser),
            "Sync": stream(self.Sync, parser(pb.SyncRequest), ser),
            "ReportEvents": unary(self.ReportEvents, parser(pb.EventBatch), ser),
            "Commands": stream(self.Commands, parser(pb.CommandsRequest), ser),
        })

    # -- from the bus -----------------------------------------------------------------------------

    def on_bus_event(self, event_type: str, payload: dict) -> None:
        if event_type == "site_data_changed":
            version = self.projection.apply(payload["site_id"], int(payload["revision"]), payload["items"])
            log.info("projection updated", extra={"site_id": payload["site_id"], "version": version,
                                                  "event_id": payload.get("event_id")})
        elif event_type in ("exit_cleared", "read_confirmed"):
            attributes = {k: str(payload[k]) for k in ("plate", "paid_until", "paid_fen", "lane_id", "session_id",
                                                       "read_id", "operator") if payload.get(k) is not None}
            command = pb.Command(command_id=payload["event_id"],
                                 kind="exit_paid" if event_type == "exit_cleared" else "read_confirmed",
                                 gate_id=payload["lot_id"], requested_by=payload.get("operator", "parking"),
                                 issued_at=_ts(datetime.fromisoformat(payload["occurred_at"])), attributes=attributes)
            delivered = self.commands.publish(payload["site_id"], command)
            log.info("parking command pushed", extra={"event_id": payload["event_id"], "agents": delivered})
        elif event_type == "gate_open_requested":
            command = pb.Command(command_id=payload["event_id"], kind="open", gate_id=payload["gate_id"],
                                 requested_by=payload.get("requested_by", ""), reason=payload.get("reason", ""),
                                 issued_at=_ts(datetime.fromisoformat(payload["occurred_at"])))
            delivered = self.commands.publish(payload["site_id"], command)
            log.info("command pushed", extra={"event_id": payload["event_id"], "agents": delivered})
            if not delivered:
                try:
                    self.publisher.publish("command_undelivered", event_payload(
                        payload["site_id"], command_id=payload["event_id"], gate_id=payload["gate_id"]))
                except Undeliverable:
                    log.warning("command_undelivered not published", extra={"event_id": payload["event_id"]})

    # -- background -----------------------------------------------------------------------------

    def status(self) -> dict:
        now = time.time()
        with self._lock:
            seen, streams, gates_of = dict(self.last_seen), dict(self.streams), dict(self.gates_of)
        return {"service": "edgelink", "pid": os.getpid(), "at": datetime.now(UTC).isoformat(),
                "sites": self.projection.versions(),
                "agents": [{"agent_id": a["agent_id"], "site_id": a["site_id"],
                            "connected": streams.get(a["agent_id"], 0) > 0,
                            "gate_ids": gates_of.get(a["agent_id"], []),
                            "last_seen_s_ago": round(now - seen[a["agent_id"]], 1) if a["agent_id"] in seen else None}
                           for a in agents.all_agents(self.engine)]}

    def background(self) -> None:
        """Heartbeats, and snapshot requests for sites whose projection is still empty."""
        asked: dict[str, float] = {}
        while not self.stopping.wait(HEARTBEAT_S):
            try:
                status = self.status()
                self.publisher.publish("heartbeat", status)
            except Undeliverable:
                pass   # nobody listens for heartbeats yet (no console)
            except Exception:
                log.exception("heartbeat failed")
                continue
            for site_id in {a["site_id"] for a in status["agents"]}:
                if status["sites"].get(site_id, 0) == 0 and time.time() - asked.get(site_id, 0) > SNAPSHOT_RETRY_S:
                    try:
                        self.publisher.publish("snapshot_requested", event_payload(site_id))
                        asked[site_id] = time.time()
                    except Undeliverable:
                        pass   # access is not up yet; ask again next round


def serve(address: str | None = None, engine=None, amqp_uri: str | None = None, workers: int | None = None):
    """Start edgelink; returns (grpc server, EdgeLink, its bus consumer, bound port)."""
    engine = engine or engine_for("edgelink")
    amqp_uri = amqp_uri or settings.amqp_uri()
    workers = workers or int(os.environ.get("EDGELINK_WORKERS", DEFAULT_WORKERS))
    link = EdgeLink(engine, ConfirmedPublisher(amqp_uri, "edgelink"), workers)
    consumer = EventConsumer(amqp_uri, "edgelink.projection",
                             [("access", "site_data_changed"), ("access", "gate_open_requested"),
                              ("parking", "site_data_changed"), ("parking", "exit_cleared"),
                              ("parking", "read_confirmed")],
                             link.on_bus_event)
    consumer.start_thread()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        handlers=[link.handler()],
        options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 16 << 20),
                 ("grpc.keepalive_time_ms", 20000), ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                 ("grpc.keepalive_permit_without_calls", 1)])
    port = server.add_insecure_port(address or settings.edgelink_address())
    server.start()
    threading.Thread(target=link.background, name="edgelink-background", daemon=True).start()
    return server, link, consumer, port


def main() -> None:
    logs.setup("edgelink")
    server, link, consumer, port = serve()
    log.info("edgelink listening", extra={"address": settings.edgelink_address()})
    done = threading.Event()

    def stop(*_):
        link.stopping.set()
        consumer.should_stop = True
        server.stop(grace=2).wait()
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done.wait()


if __name__ == "__main__":
    main()
