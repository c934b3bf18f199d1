"""Patrol: 1,000 handhelds each uploading a 20-scan batch at once to the handheld gRPC server
(stored, checked and counted into their rounds), against a raw bulk insert of the same 20,000
rows in 1,000 transactions as the baseline, in the same run; then the lag from rounds' graces
running out to `patrol.round_missed` on the bus (p50/p99 over 50 rounds).

The handheld server runs with its default thread pool (PATROL_HANDHELD_WORKERS=32). Rounds,
routes and guards are written straight into the patrol schema before the clock starts; the
guards sign in over gRPC (untimed: a PIN check is deliberately slow, scrypt).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from bench import harness

HANDHELDS = 1000
SCANS = 20
GUARDS = 200
ROUTES = 50
MISSED_ROUNDS = 50


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


@contextmanager
def _patrol_engine(stack):
    from gatehouse.db import engine_for
    saved = {k: os.environ.get(k) for k in ("GATEHOUSE_VAR", "DATABASE_URL")}
    os.environ["GATEHOUSE_VAR"] = str(stack.db.var)
    if stack.db.url:
        os.environ["DATABASE_URL"] = stack.db.url
    else:
        os.environ.pop("DATABASE_URL", None)
    engine = engine_for("patrol")
    try:
        yield engine
    finally:
        engine.dispose()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _seed(engine, now):
    """GUARDS guards, ROUTES routes of SCANS NFC checkpoints 30 m apart, HANDHELDS open rounds."""
    from sqlalchemy import insert

    from services.patrol import store, tables
    pin_hash = store.hash_pin("2468")
    with engine.begin() as conn:
        conn.execute(insert(tables.guards), [dict(guard_id=f"g{i}", site_id="bench", name=f"Guard {i}", pin_hash=pin_hash,
                                                  token_epoch=1, active=True, failed_sign_ins=0, locked_until=None,
                                                  updated_at=now) for i in range(GUARDS)])
        for r in range(ROUTES):
            store.set_route(conn, "bench", f"r{r}", f"Route {r}", [
                {"checkpoint_id": f"r{r}-c{c}", "name": f"R{r} C{c}", "tag_kind": "nfc",
                 "nfc_uid": f"04{r:03X}{c:03X}", "latitude": 31.80 + r * 0.001, "longitude": 117.20 + c * 0.0003,
                 "radius_m": 30} for c in range(SCANS)])
        start = now - timedelta(minutes=30)
        conn.execute(insert(tables.rounds), [dict(
            round_id=f"round-{k}", site_id="bench", schedule_id=None, route_id=f"r{k % ROUTES}",
            guard_id=f"g{k % GUARDS}", shift_id=None, walked_by=None, planned_start=start,
            due_by=start + timedelta(minutes=60), grace_until=start + timedelta(minutes=70), status="pending",
            created_at=now - timedelta(hours=1)) for k in range(HANDHELDS)])


def _batches(now):
    from google.protobuf.timestamp_pb2 import Timestamp

    from gatehouse.patrol.v1 import patrol_pb2 as pb

    def ts(dt):
        t = Timestamp()
        t.FromDatetime(dt)
        return t
    out = []
    for k in range(HANDHELDS):
        r = k % ROUTES
        t0 = now - timedelta(minutes=25)
        out.append((f"g{k % GUARDS}", pb.ScanBatch(
            batch_id=str(uuid.uuid4()), device_id=f"hh-{k}", device_sent_at=ts(now), scans=[
                pb.Scan(scan_id=str(uuid.uuid4()), round_id=f"round-{k}", method="nfc", tag=f"04{r:03X}{c:03X}",
                        device_time=ts(t0 + timedelta(seconds=60 * c)), has_location=True,
                        latitude=31.80 + r * 0.001, longitude=117.20 + c * 0.0003, accuracy_m=8)
                for c in range(SCANS)])))
    return out


def _upload_all(port, tokens, batches) -> tuple[float, dict]:
    import grpc

    from gatehouse.patrol.v1 import patrol_pb2_grpc as pb_grpc
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    stubs = [pb_grpc.HandheldStub(c) for c in channels]
    started = time.perf_counter()
    calls = [stubs[i % len(stubs)].UploadScans.future(batch, metadata=(("x-patrol-token", tokens[guard]),),
                                                      timeout=120)
             for i, (guard, batch) in enumerate(batches)]
    outcomes: dict[str, int] = {}
    for call in calls:
        for r in call.result().results:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    elapsed = time.perf_counter() - started
    for c in channels:
        c.close()
    return elapsed, outcomes


def _raw_baseline(engine, now) -> float:
    """The same 20,000 rows straight into the scans table: 1,000 transactions of 20 (executemany)."""
    from sqlalchemy import insert

    from services.patrol import tables
    rows = [[dict(scan_id=str(uuid.uuid4()), site_id="bench", guard_id="raw", device_id="raw", batch_id="raw",
                  round_id=None, checkpoint_id="raw", method="nfc", device_time=now, received_at=now,
                  clock_skew_ms=0, latitude=31.8, longitude=117.2, accuracy_m=8.0, photo=None, timing="on_time",
                  counted=False, flags="", review=False) for _ in range(SCANS)] for _ in range(HANDHELDS)]
    started = time.perf_counter()
    for batch in rows:
        with engine.begin() as conn:
            conn.execute(insert(tables.scans), batch)
    return time.perf_counter() - started


def _ingest(database: str) -> dict:
    import grpc
    from sqlalchemy import func, select

    from gatehouse.patrol.v1 import patrol_pb2 as pb
    from gatehouse.patrol.v1 import patrol_pb2_grpc as pb_grpc
    from services.patrol import tables
    with harness.stack(database) as s:
        s.start_patrol()
        now = datetime.now(UTC)
        with _patrol_engine(s) as engine:
            _seed(engine, now)
            channel = grpc.insecure_channel(f"127.0.0.1:{s.patrol_port}")
            stub = pb_grpc.HandheldStub(channel)
            sign_ins = [stub.SignIn.future(pb.SignInRequest(guard_id=f"g{i}", pin="2468"), timeout=120)
                        for i in range(GUARDS)]
            tokens = {f"g{i}": f.result().token for i, f in enumerate(sign_ins)}
            channel.close()
            batches = _batches(now)
            elapsed, outcomes = _upload_all(s.patrol_port, tokens, batches)
            assert outcomes == {"stored": HANDHELDS * SCANS}, outcomes
            again, repeat = _upload_all(s.patrol_port, tokens, batches)
            assert repeat == {"duplicate": HANDHELDS * SCANS}, repeat
            with engine.connect() as conn:
                complete = conn.execute(select(func.count()).select_from(tables.rounds)
                                        .where(tables.rounds.c.status == "complete")).scalar()
            assert complete == HANDHELDS, complete
            raw = _raw_baseline(engine, now)
    return {"ingest_s": elapsed, "reupload_s": again, "raw_s": raw}


def _missed_lag() -> list[float]:
    from gatehouse.bus import EventConsumer
    received: dict[str, datetime] = {}
    done = threading.Event()

    def on_event(_kind, payload):
        received.setdefault(payload["round_id"], datetime.now(UTC))
        if len(received) >= MISSED_ROUNDS:
            done.set()
    with harness.stack() as s:
        s.start_patrol()
        consumer = EventConsumer(s.amqp_uri, "bench.patrol-supervisor", [("patrol", "round_missed")], on_event)
        consumer.start_thread()
        assert consumer.ready.wait(10)
        with s.rpc() as rpc:
            p = rpc.patrol
            p.set_guard("bench", "g0", "Guard 0", "2468")
            p.set_route("bench", "r0", "Route 0", [{"checkpoint_id": "c0", "name": "C0", "tag_kind": "nfc",
                                                    "nfc_uid": "04000001", "latitude": 31.8, "longitude": 117.2}])
            first = datetime.now(UTC) + timedelta(seconds=8)
            ends = {}
            for i in range(MISSED_ROUNDS):   # graces ending 0.25 s apart over ~12 s
                end = first + timedelta(seconds=0.25 * i)
                ends[f"m{i}"] = end
                p.plan_round("r0", (end - timedelta(minutes=1)).isoformat(), 1, 0, "g0", None, f"m{i}")
        assert done.wait(120), f"only {len(received)} of {MISSED_ROUNDS} round_missed events arrived"
        consumer.should_stop = True
        return [(received[r] - ends[r]).total_seconds() for r in ends]


def bench_patrol() -> dict:
    sqlite = _ingest("sqlite")
    lags = _missed_lag()
    figures = {
        "patrol.ingest_20k_scans_s": round(sqlite["ingest_s"], 2),
        "patrol.ingest_scans_per_s": round(HANDHELDS * SCANS / sqlite["ingest_s"]),
        "patrol.reupload_20k_duplicates_s": round(sqlite["reupload_s"], 2),
        "patrol.raw_insert_20k_scans_s": round(sqlite["raw_s"], 2),
        "patrol.ingest_ratio_to_raw_insert": round(sqlite["ingest_s"] / sqlite["raw_s"], 2),
        "patrol.missed_detection_lag_p50_s": round(statistics.median(lags), 2),
        "patrol.missed_detection_lag_s": round(percentile(lags, 99), 2),
    }
    if os.environ.get("PATROL_BENCH_POSTGRES", "1") != "0":
        pg = _ingest("postgresql")
        figures.update({
            "patrol.pg_ingest_20k_scans_s": round(pg["ingest_s"], 2),
            "patrol.pg_raw_insert_20k_scans_s": round(pg["raw_s"], 2),
            "patrol.pg_ingest_ratio_to_raw_insert": round(pg["ingest_s"] / pg["raw_s"], 2),
        })
    return figures
