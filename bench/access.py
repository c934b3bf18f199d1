"""A site with 100,000 cardholders, shared by the `access` and `edge` benchmarks, and the
baselines the sync is compared with (a plain gRPC server-stream of the same bytes, a plain
SQLite insert of the same rows).

The site: a time profile open at all hours ("always", every day and holidays 00:00-24:00), a
zone "campus" with timed anti-passback (1 minute) whose entry is the gate north (device t1)
and exit the gate garage (device t2), and one group "residents" with both gates on that
schedule. Every person is a resident of one of n/100 units, in that group, with one card.
Each person also has a person-QR credential ("person:<id>"), so the site's projection and the
agent hold two credential rows per person.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from gatehouse.db import engine_for
from tests.stack import Stack, free_port, wait_for, wait_port

N = 100_000
IMPORT_CHUNK = 20_000        # people per import RPC
PEOPLE_PER_UNIT = 100
CARD_BASE = 10_000_000       # card numbers are str(CARD_BASE + i): 8 decimal digits (valid hex too)
GROUP = "residents"
ZONE = "campus"


def card_of(i: int) -> str:
    return str(CARD_BASE + i)


def person_of(i: int) -> str:
    return f"p{i:06d}"


def rpc(s: Stack, timeout: float = 600):
    """A ClusterRpcProxy with a timeout long enough for a 20,000-row import."""
    from nameko.standalone.rpc import ClusterRpcProxy
    return ClusterRpcProxy({"AMQP_URI": s.amqp_uri, "serializer": "json"}, timeout=timeout)


def _csv(header: list[str], rows) -> str:
    out = io.StringIO()
    out.write(",".join(header) + "\n")
    for row in rows:
        out.write(",".join(row) + "\n")
    return base64.b64encode(out.getvalue().encode()).decode()


def build_site(s: Stack, n: int = N, chunk: int = IMPORT_CHUNK, progress=print) -> dict:
    """Create the site and import n people with one card each; returns timings."""
    timings = {}
    started = time.perf_counter()
    with rpc(s) as r:
        a = r.access
        a.create_site(s.site_id, "Bench Estate", "Asia/Shanghai")
        a.set_time_profile(s.site_id, "always", "At all hours",
                           [{"day": d, "start": "00:00", "end": "24:00"}
                            for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun", "holiday")])
        a.set_zone(s.site_id, ZONE, "Campus", "timed", 1, "04:00")
        a.add_gate(s.site_id, "north", "North gate", ZONE, "in")
        a.add_gate(s.site_id, "garage", "Garage door", ZONE, "out")
        a.create_group(s.site_id, GROUP, "Residents", ["north", "garage"], "always")
        units = max(1, n // PEOPLE_PER_UNIT)
        report = a.import_file(s.site_id, "units.csv", _csv(
            ["unit_id", "building", "unit", "room"],
            ([f"u{u:05d}", str(u // 100 + 1), str(u // 10 % 10 + 1), str(u % 10 + 101)] for u in range(units))),
            "units", "bench")
        assert report["imported"], report
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            t = time.perf_counter()
            report = a.import_file(s.site_id, f"people-{lo}.csv", _csv(
                ["person_id", "name", "kind", "unit_id", "card_numbers", "groups"],
                ([person_of(i), f"Person {i}", "resident", f"u{i // PEOPLE_PER_UNIT % units:05d}", card_of(i), GROUP]
                 for i in range(lo, hi))), "people", "bench")
            assert report["imported"] and report["people_imported"] == hi - lo, \
                {k: v for k, v in report.items() if k != "errors_by_row"}
            progress(f"    imported people {lo}..{hi - 1} in {time.perf_counter() - t:.1f} s")
    timings["import_s"] = time.perf_counter() - started
    return timings


# -- edgelink's projection ------------------------------------------------------------------------

@contextlib.contextmanager
def edgelink_db(s: Stack):
    """A function running one SQL query against edgelink's database (SQLite file or PostgreSQL)."""
    if s.db.url:
        engine = engine_for("edgelink", s.db.url)
        try:
            def query(sql, **params):
                with engine.connect() as conn:
                    return conn.execute(text(sql), params).all()
            yield query
        finally:
            engine.dispose()
    else:
        db = sqlite3.connect(s.db.var / "edgelink.db", timeout=10)
        try:
            def query(sql, **params):
                return db.execute(sql, params).fetchall()
            yield query
        finally:
            db.close()


def projection_state(query, site_id: str) -> tuple[int, int]:
    """(site version, credential items) of the site's projection at edgelink."""
    version = query("SELECT version FROM site_versions WHERE site_id = :s", s=site_id)
    count = query("SELECT count(*) FROM items WHERE site_id = :s AND item_key LIKE 'credential:%'", s=site_id)
    return (version[0][0] if version else 0), count[0][0]


def wait_projection(s: Stack, credentials: int, timeout: float = 600) -> tuple[int, int]:
    """Wait until edgelink holds `credentials` credential items and its version stops moving."""
    with edgelink_db(s) as query:
        wait_for(lambda: projection_state(query, s.site_id)[1] >= credentials, timeout=timeout, interval=0.5,
                 what=f"{credentials} credentials in edgelink's projection")
        last = None
        while True:      # the trailing changes (settings, ...) may still be on their way
            state = projection_state(query, s.site_id)
            if state == last:
                return state
            last = state
            time.sleep(1.0)


# -- a fresh agent: time to a full copy -----------------------------------------------------------

def agent_position(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    return int(row[0]) if row else 0


def _log_times(log: str, msg: str, after: float) -> list[float]:
    out = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError, KeyError):
            entry = json.loads(line)
            if entry.get("msg", "") == msg:
                at = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
                if at >= after - 0.002:
                    out.append(at)
    return out


def timed_fresh_sync(s: Stack, version: int, credentials: int, timeout: float = 300) -> dict:
    """Wipe the agent's data dir, start the agent process, and time it to a full copy.

    total_s: process start -> the agent's SQLite holds the whole projection (cursor = the site's
    version, committed in the same transaction as the rows);
    startup_s: process start -> the agent's "agent started" log line (imports, drivers, link);
    sync_s: edgelink's "agent hello" -> full copy (the sync proper).
    """
    s.stop("agent")
    data_dir = s.tmp / "edge"
    for path in data_dir.glob("agent.db*"):
        path.unlink()
    site_file = s.write_site_file()
    wall0, started = time.time(), time.perf_counter()
    s.start("agent", [str(Path(sys.executable).parent / "gatehouse"), "agent", "run", str(site_file)])
    db_path = data_dir / "agent.db"
    wait_for(lambda: db_path.exists(), timeout=30, interval=0.005, what="the agent's database")
    db = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                db = db or sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
                if agent_position(db) >= version:
                    break
            except sqlite3.OperationalError:    # tables not created yet
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent not synced after {timeout} s")
            time.sleep(0.01)
        total = time.perf_counter() - started
        wall_done = wall0 + total
        rows = db.execute("SELECT count(*) FROM credentials").fetchone()[0]
    finally:
        if db is not None:
            db.close()
    assert rows == credentials, f"agent holds {rows} credentials, edgelink {credentials}"
    wait_port(s.reader_port)
    started_at = _log_times(s.log("agent"), "agent started", wall0)
    hello_at = _log_times(s.log("edgelink"), "agent hello", wall0)
    return {"total_s": total, "rows": rows,
            "startup_s": started_at[0] - wall0 if started_at else None,
            "sync_s": wall_done - hello_at[0] if hello_at else None}


# -- baselines ----------------------------------------------------------------------------------

def projection_payloads(s: Stack) -> list[bytes]:
    """The site's stored Change payloads in version order (what a full sync streams)."""
    with edgelink_db(s) as query:
        return [bytes(p) for (p,) in query("SELECT payload FROM items WHERE site_id = :s ORDER BY version",
                                           s=s.site_id)]


RAW_SERVICE = "bench.Raw"


def serve_raw(port: int, payload_file: str, batch: int) -> None:
    """A plain grpcio server streaming the given Change payloads as SyncBatch messages, built once."""
    from concurrent import futures

    import grpc

    from gatehouse.edge.v1 import edge_pb2 as pb
    data = Path(payload_file).read_bytes()
    payloads, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        payloads.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    batches = []
    for lo in range(0, len(payloads), batch):
        changes = []
        for v, payload in enumerate(payloads[lo:lo + batch], start=lo + 1):
            change = pb.Change.FromString(payload)
            change.version = v
            changes.append(change)
        batches.append(pb.SyncBatch(cursor=lo + len(changes), caught_up=lo + batch >= len(payloads),
                                    changes=changes).SerializeToString())

    def stream(request, context):
        yield from batches

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_send_message_length", 16 << 20)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(RAW_SERVICE, {
        "Stream": grpc.unary_stream_rpc_method_handler(stream, lambda b: b, lambda b: b)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def raw_grpc_stream(payloads: list[bytes], tmp: Path, batch: int = 1000, runs: int = 3) -> float:
    """Seconds for a plain grpcio server-stream of the same payloads (batched as the sync does),
    received and parsed into SyncBatch messages by a grpc.aio client, as the agent does."""
    import asyncio

    import grpc

    from gatehouse.edge.v1 import edge_pb2 as pb
    payload_file = tmp / "raw-payloads.bin"
    payload_file.write_bytes(b"".join(len(p).to_bytes(4, "big") + p for p in payloads))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.access", "serve-raw", str(port), str(payload_file),
                             str(batch)], stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout.readline().strip() == b"ready"

        async def once() -> float:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await channel.channel_ready()
                call = channel.unary_stream(f"/{RAW_SERVICE}/Stream", request_serializer=lambda b: b,
                                            response_deserializer=pb.SyncBatch.FromString)
                started = time.perf_counter()
                got = 0
                async for message in call(b""):
                    got += len(message.changes)
                elapsed = time.perf_counter() - started
                assert got == len(payloads), (got, len(payloads))
                return elapsed
        return min(asyncio.run(once()) for _ in range(runs))
    finally:
        proc.terminate()
        proc.wait(10)


def raw_sqlite_insert(payloads: list[bytes], tmp: Path, batch: int = 1000, runs: int = 3) -> float:
    """Seconds to insert the same credential rows (decoded beforehand) into the agent's schema,
    with the agent's pragmas (WAL, synchronous=FULL) and one transaction per 1,000 rows, as the
    sync commits them; nothing else."""
    from edge.store import SCHEMA, SEP
    from gatehouse.edge.v1 import edge_pb2 as pb
    rows = []
    for payload in payloads:
        change = pb.Change.FromString(payload)
        if change.WhichOneof("item") == "credential":
            c = change.credential
            rows.append((c.card_number, c.person_id, c.person_name, c.status, c.valid_from, c.valid_until,
                         SEP.join(c.gate_ids), SEP.join(c.group_ids), c.person_kind or "resident",
                         c.max_uses, c.uses))
    best = float("inf")
    for run in range(runs):
        path = tmp / f"raw-{run}.db"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        started = time.perf_counter()
        for lo in range(0, len(rows), batch):
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO credentials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           rows[lo:lo + batch])
            db.execute("COMMIT")
        best = min(best, time.perf_counter() - started)
        db.close()
        for p in tmp.glob(f"raw-{run}.db*"):
            p.unlink()
    return best


# -- delta propagation: console API -> the agent's decision --------------------------------------

class Gate:
    """Presents cards through a reader connection, alternating each person's entry (t1, north)
    and exit (t2, garage), so that timed anti-passback never refuses a poll."""

    def __init__(self, present):
        self.present = present
        self.last_granted: dict[str, str] = {}

    def ask(self, card: str) -> dict:
        device = "t2" if self.last_granted.get(card) == "t1" else "t1"
        reply = self.present(device, card)
        if reply.get("granted"):
            self.last_granted[card] = device
        return reply


def propagation(s: Stack, present, n: int = N, iterations: int = 200, poll_s: float = 0.003,
                seed: int = 1) -> dict:
    """Alternately revoke a random card (POST .../cards/<card>/revoke) and give it back
    (POST /api/people/<id>/cards with the same number), each time polling the agent's decision
    every poll_s until it changes. Milliseconds from sending the request to the first reply
    showing the change (an upper bound, by one poll at most)."""
    import http.client
    import random
    from collections import Counter

    rnd = random.Random(seed)
    gate = Gate(present)
    conn = http.client.HTTPConnection("127.0.0.1", s.console_port, timeout=30)

    def post(path: str, body: dict | None) -> None:
        conn.request("POST", path, body=json.dumps(body or {}), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        assert response.status in (200, 201), (path, response.status, data)

    out = {"revoke": [], "grant": [], "call": [], "polls": 0, "unexpected": Counter()}
    card = person = None
    for it in range(iterations):
        if it % 2 == 0:
            i = rnd.randrange(n)
            card, person = card_of(i), person_of(i)
            before = gate.ask(card)
            assert before["granted"], before
            kind, path, body = "revoke", f"/api/sites/{s.site_id}/cards/{card}/revoke", None
            changed, unchanged = (lambda r: r["reason"] == "card_revoked"), (lambda r: r["granted"])
        else:
            kind, path, body = "grant", f"/api/people/{person}/cards", {"card_number": card}
            changed, unchanged = (lambda r: r["granted"]), (lambda r: r["reason"] == "card_revoked")
        started = time.perf_counter()
        post(path, body)
        out["call"].append((time.perf_counter() - started) * 1000)
        while True:
            reply = gate.ask(card)
            out["polls"] += 1
            if changed(reply):
                break
            if not unchanged(reply):
                out["unexpected"][reply.get("reason")] += 1
            if time.perf_counter() - started > 30:
                raise AssertionError(f"{kind} of {card} not seen by the agent after 30 s: {reply}")
            time.sleep(poll_s)
        out[kind].append((time.perf_counter() - started) * 1000)
    conn.close()
    return out


def rpc_round_trips(s: Stack, n: int = 200) -> list[float]:
    """Milliseconds of a plain nameko RPC round trip to access (`site`, one primary-key read)."""
    latencies = []
    with rpc(s, timeout=30) as r:
        r.access.site(s.site_id)
        for _ in range(n):
            started = time.perf_counter()
            r.access.site(s.site_id)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def revoke_round_trips(s: Stack, n: int = 50, seed: int = 3) -> list[float]:
    """Milliseconds of access's revoke_card RPC itself (no console), then issue_card back: the
    write that the console call wraps (each card is given back after its revoke)."""
    import random
    rnd = random.Random(seed)
    latencies = []
    with rpc(s, timeout=30) as r:
        for _ in range(n):
            i = N - 2 - rnd.randrange(1000)
            started = time.perf_counter()
            r.access.revoke_card(s.site_id, card_of(i))
            latencies.append((time.perf_counter() - started) * 1000)
            r.access.issue_card(person_of(i), card_of(i))
    return latencies


def decisions_during_resync(s: Stack, cards, timeout: float = 300) -> tuple[list[float], float, list[float],
                                                                          list[float]]:
    """Decision latencies (ms) while the agent takes a full re-sync of the site: access publishes
    a snapshot (what it does when edgelink's projection is new or rebuilt), every item gets a new
    version, and the agent streams all of them again while it keeps deciding. Cards in pairs at
    t1 then t2, as in the edge benchmark. Returns (latencies, seconds the re-sync took, the
    agent's own time per decision: from request read to reply, without the reader round trip, and
    the part of it before the unlock command: deciding and committing the event)."""
    import threading

    from bench.harness import reader
    with edgelink_db(s) as query:
        before, _ = projection_state(query, s.site_id)
    failure: list[BaseException] = []

    def snapshot():
        try:
            with rpc(s, timeout=timeout) as r:
                r.access.publish_snapshot(s.site_id)
        except BaseException as exc:   # raised below
            failure.append(exc)

    agent = sqlite3.connect(f"file:{s.tmp / 'edge' / 'agent.db'}?mode=ro", uri=True, timeout=10)
    latencies: list[float] = []
    inside: list[float] = []
    decided: list[float] = []
    try:
        thread = threading.Thread(target=snapshot, daemon=True)
        started = time.perf_counter()
        thread.start()
        wait_for(lambda: agent_position(agent) > before, timeout=60, interval=0.005, what="the re-sync to start")
        with edgelink_db(s) as query, reader(s) as present:
            i, card, done = 0, None, False
            while not done:
                if i % 2 == 0:
                    card = next(cards)
                t = time.perf_counter()
                reply = present("t1" if i % 2 == 0 else "t2", card)
                latencies.append((time.perf_counter() - t) * 1000)
                inside.append(reply["ms"])
                decided.append(reply["decided_ms"])
                assert reply["granted"] and reply["unlocked"], reply
                i += 1
                if i % 2 == 0 and not thread.is_alive():
                    # access has published everything; done once the agent holds all of it
                    done = agent_position(agent) >= projection_state(query, s.site_id)[0]
                if time.perf_counter() - started > timeout:
                    raise AssertionError("the agent did not finish the re-sync")
        elapsed = time.perf_counter() - started
    finally:
        agent.close()
    if failure:
        raise failure[0]
    return latencies, elapsed, inside, decided


# -- the agent's memory -------------------------------------------------------------------------

def rss_mb(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, in MB (2^20 bytes)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-raw"]:
        serve_raw(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
