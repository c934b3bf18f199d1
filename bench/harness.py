"""What the benchmarks share: a running stack on SQLite in a private vhost, the site with
100,000 cardholders (bench/access.py), and the two ingest measurements (ours and the
plain-kombu baseline)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Producer, Queue
from sqlalchemy import text

from gatehouse.db import engine_for
from tests.stack import Database, Stack, private_vhost, wait_for

BASE_AMQP = os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")


@contextlib.contextmanager
def stack(database: str = "sqlite"):
    with tempfile.TemporaryDirectory(prefix="gh-bench-") as tmp, private_vhost(BASE_AMQP) as uri:
        db = Database(database, Path(tmp))
        s = Stack(Path(tmp), db, uri)
        try:
            s.migrate()
            yield s
        finally:
            s.close()
            db.drop()


@contextlib.contextmanager
def big_site(n: int | None = None, console: bool = False, progress=print):
    """A stack (access, edgelink, simulated t1 and t2, agent registered but not started) whose
    site has n people (default 100,000) with one card each, already in edgelink's projection.

    Yields (stack, site_version, credential_items): what a fresh agent must end up holding."""
    from bench import access
    n = n or access.N
    with stack() as s:
        s.start_access()
        s.start_edgelink()
        for device in ("t1", "t2"):
            s.start_sim(device)
        if console:
            s.start_console()
        s.register_agent()
        started = time.perf_counter()
        access.build_site(s, n, progress=progress)
        version, credentials = access.wait_projection(s, 2 * n)
        progress(f"    site of {n} people in edgelink's projection after {time.perf_counter() - started:.1f} s "
                 f"(version {version}, {credentials} credential items)")
        yield s, version, credentials


def wait_synced(s: Stack, card: str) -> None:
    wait_for(lambda: s.agent_cached(card), timeout=60, what=f"card {card} at the agent")


@contextlib.contextmanager
def reader(s: Stack):
    """A card reader connected to the agent: present(device, card) -> the agent's reply."""
    with socket.create_connection(("127.0.0.1", s.reader_port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = conn.makefile("rb")

        def present(device: str, card: str) -> dict:
            conn.sendall(json.dumps({"device_id": device, "card_number": card}).encode() + b"\n")
            return json.loads(lines.readline())
        yield present


def outbox_to_rows(n: int, database: str = "sqlite") -> float:
    """Events per second from a full agent outbox to rows in the access database."""
    from edge.link import CentreLink
    from edge.store import EdgeStore

    with stack(database) as s:
        s.start_access()
        s.start_edgelink()
        secret = s.register_agent()
        store = EdgeStore(s.tmp / "edge" / "agent.db", durable=False)
        for i in range(n):
            store.append_event(f"t{i % 4}", "north", "access_granted",
                               {"card_number": str(1000 + i % 500), "reason": "granted"}, offline=True)
        engine = engine_for("access", s.db.url) if s.db.url else None
        access_db = s.db.var / "access.db"

        def stored() -> int:
            if engine is not None:
                with engine.connect() as conn:
                    return conn.execute(text("SELECT count(*) FROM access_events")).scalar()
            with sqlite3.connect(access_db, timeout=10) as db:
                return db.execute("SELECT count(*) FROM access_events").fetchone()[0]

        async def upload() -> float:
            async def no_command(_):
                return None
            link = CentreLink(f"127.0.0.1:{s.edgelink_port}", s.agent_id, secret, s.site_id, store, [], no_command)
            started = time.perf_counter()
            await link.start()
            while stored() < n:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            await link.stop()
            return elapsed

        elapsed = asyncio.run(upload())
        assert stored() == n and store.outbox_size() == 0
        store.close()
        if engine is not None:
            engine.dispose()
    return n / elapsed


def raw_kombu(n: int) -> float:
    """Baseline: plain kombu, one event per message, publish with confirms + consume and ack."""
    with private_vhost(BASE_AMQP) as uri:
        exchange = Exchange("bench.events", type="topic", durable=True)
        queue = Queue("bench.raw", exchange=exchange, routing_key="event", durable=True)
        with Connection(uri) as conn:
            queue(conn.channel()).declare()
        done = threading.Event()
        got = 0

        def consume():
            nonlocal got
            with Connection(uri) as conn:
                def on_message(body, message):
                    nonlocal got
                    message.ack()
                    got += 1
                    if got == n:
                        done.set()
                with conn.Consumer(queue, callbacks=[on_message], accept=["json"]) as consumer:
                    consumer.qos(prefetch_count=100)
                    while not done.is_set():
                        with contextlib.suppress(socket.timeout, TimeoutError):
                            conn.drain_events(timeout=1)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.5)
        with Connection(uri, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.channel(), exchange=exchange, serializer="json")
            started = time.perf_counter()
            for i in range(n):
                producer.publish({"event_id": str(uuid.uuid4()), "device_id": f"t{i % 4}", "kind": "access_granted",
                                  "device_seq": i, "device_time": time.time(), "attributes": {"card_number": "1001"}},
                                 routing_key="event", delivery_mode=2)
            done.wait(300)
            elapsed = time.perf_counter() - started
        thread.join(5)
        assert got == n, f"baseline consumed {got} of {n}"
    return n / elapsed


def raw_coil_writes(port: int, point, unit: int, n: int) -> list[float]:
    """The baseline of a device decision: n bare pymodbus writes of the coil the agent would
    write (ms each), on one connection, without the agent around them."""
    from pymodbus.client import AsyncModbusTcpClient

    async def run() -> list[float]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            await client.write_coil(point.address, True, device_id=unit)
            latencies.append((time.perf_counter() - started) * 1000)
        client.close()
        return latencies
    return asyncio.run(run())
