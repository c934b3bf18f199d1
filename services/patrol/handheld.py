"""The patrol handhelds' gRPC server (gatehouse.patrol.v1.Handheld): plain grpcio, threads, no
eventlet (stock grpcio does not run under eventlet; see DESIGN.md "Edge link").

It is the patrol service's second process: it writes the patrol schema directly (sign-in,
scans, incidents) through services.patrol.store, in one transaction per call. The nameko
process (services.patrol.service) plans rounds, closes those whose grace ran out and relays
the outbox, so events queued here (incident_reported) go out from there.

Run: python -m services.patrol.handheld      (PATROL_HANDHELD_ADDRESS, default 127.0.0.1:50052)
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import threading
import time
from concurrent import futures
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse import logs, settings
from gatehouse.db import engine_for, is_sqlite
from gatehouse.grpcparse import Malformed, parser
from gatehouse.patrol.v1 import patrol_pb2 as pb
from services.patrol import store

log = logging.getLogger("patrol.handheld")

SERVICE = "gatehouse.patrol.v1.Handheld"
DEFAULT_ADDRESS = "127.0.0.1:50052"
DEFAULT_WORKERS = 32
TOKEN_HOURS = 12
CACHE_S = 5.0             # a deactivated guard or a new key is seen within this many seconds
MAX_MESSAGE = 64 << 20    # a batch with photos (2 MiB each at most) must stay under this: ~30 photos


def address() -> str:
    return os.environ.get("PATROL_HANDHELD_ADDRESS", DEFAULT_ADDRESS)


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _dt(ts: Timestamp) -> datetime:
    return ts.ToDatetime(UTC)


class Tokens:
    """HMAC-signed bearer tokens: {guard, epoch, exp}. A new PIN or a deactivated guard raises the
    guard's epoch, which ends every token issued before."""

    def __init__(self, secret: bytes):
        self.secret = secret

    def issue(self, guard_id: str, epoch: int, expires: datetime) -> str:
        body = base64.urlsafe_b64encode(json.dumps({"g": guard_id, "e": epoch, "x": int(expires.timestamp())},
                                                   separators=(",", ":")).encode()).rstrip(b"=").decode()
        return f"{body}.{self._sig(body)}"

    def _sig(self, body: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.secret, body.encode(), hashlib.sha256).digest()
                                        ).rstrip(b"=").decode()

    def read(self, token: str) -> tuple[str, int] | None:
        body, _, sig = token.partition(".")
        if not body or not hmac.compare_digest(sig, self._sig(body)):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if claims.get("x", 0) < time.time():
            return None
        return claims["g"], claims["e"]


class Handheld:
    def __init__(self, engine):
        self.engine = engine
        with engine.begin() as conn:
            self.tokens = Tokens(store.token_secret(conn))
        self._lock = threading.Lock()
        # SQLite takes one writer at a time: writers queue here (a fair, instant hand-over) rather
        # than in SQLite's busy handler, which sleeps in growing steps and leaves the lock idle
        self._writes = threading.Lock() if is_sqlite(engine) else nullcontext()
        self._guards: dict[tuple[str, int], tuple[float, dict | None]] = {}
        self._keys: dict[str, tuple[float, dict]] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def _check(self, request, context) -> None:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)

    def _guard(self, request, context) -> dict:
        self._check(request, context)
        token = dict(context.invocation_metadata()).get("x-patrol-token", "")
        who = self.tokens.read(token) if token else None
        if who is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "sign in again: the token is missing, expired or not ours")
        now = time.monotonic()
        with self._lock:
            cached = self._guards.get(who)
        if cached is None or cached[0] < now:
            with self.engine.connect() as conn:
                row = store.guard_for_token(conn, *who)
            with self._lock:
                self._guards[who] = (now + CACHE_S, row)
        else:
            row = cached[1]
        if row is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "sign in again: the guard was deactivated or their PIN changed")
        return row

    def _site_keys(self, conn, site_id: str) -> dict:
        now = time.monotonic()
        with self._lock:
            cached = self._keys.get(site_id)
        if cached and cached[0] >= now:
            return cached[1]
        keys = store.public_keys(conn, site_id)
        with self._lock:
            self._keys[site_id] = (now + CACHE_S, keys)
        return keys

    # -- rpcs -------------------------------------------------------------------------------------

    def SignIn(self, request, context):
        self._check(request, context)
        if not request.guard_id or not request.pin:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "guard_id and pin are required")
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            candidate = store.sign_in_candidate(conn, request.guard_id)
        # the PIN check is slow on purpose (scrypt): no database lock is held meanwhile
        pin_ok = store.check_pin(request.pin, candidate["pin_hash"] if candidate else store._DUMMY_HASH)
        with self._writes, self.engine.begin() as conn:
            row, why = store.sign_in_outcome(conn, request.guard_id, candidate, pin_ok, now)
        if row is None:
            log.warning("sign-in refused", extra={"guard_id": request.guard_id, "device_id": request.device_id,
                                                  "reason": why})
            context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        expires = now + timedelta(hours=TOKEN_HOURS)
        log.info("guard signed in", extra={"guard_id": row["guard_id"], "device_id": request.device_id})
        return pb.SignInReply(token=self.tokens.issue(row["guard_id"], row["token_epoch"], expires),
                              expires_at=_ts(expires), guard_id=row["guard_id"], guard_name=row["name"],
                              site_id=row["site_id"], server_time=_ts(now))

    def Assignments(self, request, context):
        guard = self._guard(request, context)
        hours = request.hours_ahead or 24
        if hours > 72:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hours_ahead is at most 72")
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            data = store.assignments(conn, guard["guard_id"], now, hours)
        return pb.AssignmentsReply(
            rounds=[pb.Round(round_id=r["round_id"], route_id=r["route_id"], status=r["status"],
                             planned_start=_ts(datetime.fromisoformat(r["planned_start"])),
                             due_by=_ts(datetime.fromisoformat(r["due_by"])),
                             grace_until=_ts(datetime.fromisoformat(r["grace_until"])),
                             scanned_checkpoint_ids=r["scanned_checkpoint_ids"], assigned_to=r["assigned_to"] or "")
                    for r in data["rounds"]],
            routes=[pb.Route(route_id=r["route_id"], name=r["name"], ordered=r["ordered"], risk_level=r["risk_level"],
                             checkpoints=[pb.Checkpoint(checkpoint_id=c["checkpoint_id"], name=c["name"], seq=c["seq"],
                                                        tag_kind=c["tag_kind"], nfc_uid=c["nfc_uid"] or "",
                                                        latitude=c["latitude"], longitude=c["longitude"],
                                                        radius_m=c["radius_m"]) for c in r["checkpoints"]])
                    for r in data["routes"]],
            keys=[pb.SiteKey(key_id=k, public_key=v) for k, v in sorted(data["keys"].items())],
            server_time=_ts(now))

    def UploadScans(self, request, context):
        guard = self._guard(request, context)
        received_at = datetime.now(UTC)
        batch = {"batch_id": request.batch_id, "device_id": request.device_id,
                 "device_sent_at": _dt(request.device_sent_at) if request.HasField("device_sent_at") else None,
                 "scans": [{"scan_id": s.scan_id, "round_id": s.round_id, "method": s.method, "tag": s.tag,
                            "device_time": _dt(s.device_time) if s.HasField("device_time") else None,
                            "has_location": s.has_location, "latitude": s.latitude, "longitude": s.longitude,
                            "accuracy_m": s.accuracy_m, "photo": s.photo or None} for s in request.scans]}
        try:
            with self._writes, self.engine.begin() as conn:
                answer = store.ingest_batch(conn, guard, batch, received_at, self._site_keys(conn, guard["site_id"]))
        except store.InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        results = answer["results"]
        counts = {o: sum(r.outcome == o for r in results) for o in ("stored", "duplicate", "refused")}
        log.info("scans uploaded", extra={"guard_id": guard["guard_id"], "batch_id": request.batch_id,
                                          "device_id": request.device_id, **counts,
                                          "clock_skew_s": answer["clock_skew_s"]})
        return pb.ScanBatchReply(
            results=[pb.ScanResult(scan_id=r.scan_id, outcome=r.outcome, reason=r.reason, detail=r.detail,
                                   round_id=r.round_id, checkpoint_id=r.checkpoint_id, flags=r.flags)
                     for r in results],
            received_at=_ts(received_at), clock_skew_s=answer["clock_skew_s"] or 0.0)

    def ReportIncident(self, request, context):
        guard = self._guard(request, context)
        report = {"incident_id": request.incident_id, "round_id": request.round_id,
                  "checkpoint_id": request.checkpoint_id, "type": request.type, "severity": request.severity,
                  "text": request.text, "photo": request.photo or None,
                  "device_time": _dt(request.device_time) if request.HasField("device_time") else None}
        try:
            with self._writes, self.engine.begin() as conn:
                result = store.report_incident(conn, guard, report, datetime.now(UTC))
        except store.NotAssigned as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except store.NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except store.InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("incident reported", extra={"guard_id": guard["guard_id"], "incident_id": request.incident_id,
                                             "duplicate": result["duplicate"]})
        return pb.IncidentReply(**result)

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        ser = lambda m: m.SerializeToString()  # noqa: E731
        return grpc.method_handlers_generic_handler(SERVICE, {
            "SignIn": unary(self.SignIn, parser(pb.SignInRequest), ser),
            "Assignments": unary(self.Assignments, parser(pb.AssignmentsRequest), ser),
            "UploadScans": unary(self.UploadScans, parser(pb.ScanBatch), ser),
            "ReportIncident": unary(self.ReportIncident, parser(pb.IncidentReport), ser),
        })


def serve(bind: str | None = None, engine=None, workers: int | None = None):
    """Start the handheld server; returns (grpc server, Handheld, bound port)."""
    workers = workers or int(os.environ.get("PATROL_HANDHELD_WORKERS", DEFAULT_WORKERS))
    if engine is None:
        pool = {"pool_size": workers, "max_overflow": 4} if settings.database_url() else {}
        engine = engine_for("patrol", **pool)
    handheld = Handheld(engine)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=[handheld.handler()],
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", 16 << 20)])
    port = server.add_insecure_port(bind or address())
    server.start()
    return server, handheld, port


def main() -> None:
    logs.setup("patrol-handheld")
    server, _, port = serve()
    log.info("patrol handheld server listening", extra={"address": address(), "port": port})
    done = threading.Event()

    def stop(*_):
        server.stop(grace=2).wait()
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done.wait()


if __name__ == "__main__":
    main()
