"""Real processes for tests: the nameko services, edgelink, simulated turnstiles and an agent,
each started as it is in `make run`, against a fresh database and a private RabbitMQ vhost."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROFILE = ROOT / "edge/profiles/turnstile-generic.yaml"
BARRIER_PROFILE = ROOT / "edge/profiles/barrier-generic.yaml"
DISPLAY_PROFILE = ROOT / "edge/profiles/display-generic.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # not ready yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def wait_port(port: int, timeout: float = 20.0) -> None:
    def accepting():
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    wait_for(accepting, timeout, what=f"port {port}")


class Database:
    """A scratch database: a folder of SQLite files, or a new PostgreSQL database."""

    def __init__(self, kind: str, tmp: Path):
        self.kind = kind
        self.var = tmp / "var"
        self.var.mkdir(parents=True, exist_ok=True)
        self.url = None
        if kind == "postgresql":
            base = make_url(os.environ.get("TEST_POSTGRES_URL",
                                           "postgresql+psycopg://gatehouse:gatehouse@127.0.0.1:5432/gatehouse_test"))
            self.name = f"gh_{uuid.uuid4().hex[:12]}"
            self._admin = dict(host=base.host, port=base.port or 5432, user=base.username,
                               password=base.password or "", dbname=base.database, autocommit=True)
            with psycopg.connect(**self._admin) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = base.set(database=self.name).render_as_string(hide_password=False)

    def env(self) -> dict:
        env = {"GATEHOUSE_VAR": str(self.var)}
        if self.url:
            env["DATABASE_URL"] = self.url
        return env

    def wipe(self, service: str) -> None:
        """Lose one service's data entirely (as if its disk died), ready to migrate again."""
        if self.kind == "postgresql":
            with psycopg.connect(**{**self._admin, "dbname": self.name}) as conn:
                conn.execute(f'DROP SCHEMA "{service}" CASCADE')
        else:
            for path in self.var.glob(f"{service}.db*"):
                path.unlink()

    def drop(self) -> None:
        if self.kind == "postgresql":
            with psycopg.connect(**self._admin) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Stack:
    """Start and stop the processes of one site; all share a database and a vhost."""

    def __init__(self, tmp: Path, db: Database, amqp_uri: str):
        self.tmp, self.db, self.amqp_uri = tmp, db, amqp_uri
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.edgelink_port = free_port()
        self.console_port = free_port()
        self.reader_port = free_port()
        self.sim_ports = {"t1": free_port(), "t2": free_port()}
        self.lane_ports = {lane: (free_port(), free_port()) for lane in ("in1", "out1")}   # barrier, display
        self.site_id = "site1"
        self.agent_id = "agent1"
        self.env = {**os.environ, **db.env(), "AMQP_URI": amqp_uri, "PYTHONUNBUFFERED": "1",
                    "EDGELINK_ADDRESS": f"127.0.0.1:{self.edgelink_port}",
                    "CONSOLE_ADDRESS": f"127.0.0.1:{self.console_port}",
                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        if not db.url:    # SQLite: a DATABASE_URL from the caller's shell must not leak in
            self.env.pop("DATABASE_URL", None)

    # -- processes --------------------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def start(self, name: str, argv: list[str] | None = None, extra_env: dict | None = None) -> None:
        if argv is not None:
            self.commands[name] = argv
        log = open(self.logs / f"{name}.log", "ab")
        env = {**self.env, **(extra_env or {}), "GATEHOUSE_SERVICE": name}
        self.procs[name] = subprocess.Popen(self.commands[name], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 10) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    # -- the parts ------------------------------------------------------------------------------

    def migrate(self) -> None:
        self.run(str(BIN / "gatehouse"), "migrate")

    def start_access(self) -> None:
        """Start the access service and wait until it answers RPC (its queues are bound then)."""
        self.start("access", [str(BIN / "nameko"), "run", "--config", "deploy/nameko.yaml", "services.access.service"])
        with self.rpc() as rpc:
            wait_for(lambda: rpc.access.count_events() >= 0, timeout=30, interval=0.2, what="access answering")

    def start_parking(self) -> None:
        """Start the parking service and wait until it answers RPC."""
        self.start("parking", [str(BIN / "nameko"), "run", "--config", "deploy/nameko.yaml",
                               "services.parking.service"])
        with self.rpc() as rpc:
            wait_for(lambda: rpc.parking.list_vehicles("none") == [], timeout=30, interval=0.2,
                     what="parking answering")

    def start_patrol(self) -> None:
        """Start the patrol service and its handheld gRPC server; wait until both answer."""
        self.patrol_port = free_port()
        self.env["PATROL_HANDHELD_ADDRESS"] = f"127.0.0.1:{self.patrol_port}"
        self.start("patrol", [str(BIN / "nameko"), "run", "--config", "deploy/nameko.yaml", "services.patrol.service"])
        self.start("patrol-handheld", [sys.executable, "-m", "services.patrol.handheld"])
        with self.rpc() as rpc:
            wait_for(lambda: rpc.patrol.list_guards("none") == [], timeout=30, interval=0.2, what="patrol answering")
        wait_port(self.patrol_port)

    def start_notify(self, extra_env: dict | None = None) -> None:
        """Start the notify service and wait until it answers RPC (its event queues are bound then)."""
        self.start("notify", [str(BIN / "nameko"), "run", "--config", "deploy/nameko.yaml",
                              "services.notify.service"], extra_env)
        with self.rpc() as rpc:
            wait_for(lambda: rpc.notify.list_recipients("none") == [], timeout=30, interval=0.2,
                     what="notify answering")

    def start_billing(self, extra_env: dict | None = None) -> None:
        """Start the billing service and wait until it answers RPC (its event queue is bound then)."""
        self.start("billing", [str(BIN / "nameko"), "run", "--config", "deploy/nameko.yaml",
                               "services.billing.service"], extra_env)
        with self.rpc() as rpc:
            wait_for(lambda: rpc.billing.list_runs("none") == [], timeout=30, interval=0.2,
                     what="billing answering")

    def start_console(self) -> None:
        self.start("console", [str(BIN / "nameko"), "run", "--config", "deploy/nameko.yaml",
                               "services.console.service"])
        wait_port(self.console_port)

    def start_edgelink(self) -> None:
        self.start("edgelink", [sys.executable, "-m", "services.edgelink.server"])
        wait_port(self.edgelink_port)

    def start_sim(self, device: str, profile: Path = PROFILE) -> None:
        self.start(f"sim-{device}", [str(BIN / "gatehouse"), "sim", "serve", "--profile", str(profile),
                                     "--port", str(self.sim_ports[device])])
        wait_port(self.sim_ports[device])

    def start_lane_sims(self, travel_ms: int = 300) -> None:
        """A barrier and a display for lanes in1 and out1 (real Modbus TCP simulators)."""
        for lane in ("in1", "out1"):
            self.start(f"barrier-{lane}", [sys.executable, "-m", "edge.sim.barrier", "--profile", str(BARRIER_PROFILE),
                                           "--port", str(self.lane_ports[lane][0]), "--travel-ms", str(travel_ms)])
            self.start(f"display-{lane}", [sys.executable, "-m", "edge.sim.display", "--profile",
                                           str(DISPLAY_PROFILE), "--port", str(self.lane_ports[lane][1])])
        for ports in self.lane_ports.values():
            for port in ports:
                wait_port(port)

    def lane_config(self, **overrides) -> list[dict]:
        return [{"lane_id": lane, "lot_id": "lot1",
                 "barrier": {"profile": str(BARRIER_PROFILE), "host": "127.0.0.1", "port": ports[0]},
                 "display": {"profile": str(DISPLAY_PROFILE), "host": "127.0.0.1", "port": ports[1]}, **overrides}
                for lane, ports in self.lane_ports.items()]

    def register_agent(self) -> str:
        secret_file = self.tmp / "agent.secret"
        self.run(str(BIN / "gatehouse"), "agent", "register", self.agent_id, "--site", self.site_id,
                 "--secret-file", str(secret_file))
        return secret_file.read_text().strip()

    def write_site_file(self, profile: Path = PROFILE, **overrides) -> Path:
        import yaml
        site = {"site_id": self.site_id, "agent_id": self.agent_id, "secret_file": str(self.tmp / "agent.secret"),
                "edgelink": f"127.0.0.1:{self.edgelink_port}", "data_dir": str(self.tmp / "edge"),
                "reader_listen": f"127.0.0.1:{self.reader_port}",
                "devices": [{"device_id": d, "gate_id": gate, "profile": str(profile), "host": "127.0.0.1",
                             "port": self.sim_ports[d]} for d, gate in (("t1", "north"), ("t2", "garage"))]}
        site.update(overrides)
        path = self.tmp / "site.yaml"
        path.write_text(yaml.safe_dump(site))
        return path

    def start_agent(self, site_file: Path | None = None) -> None:
        site_file = site_file or self.write_site_file()
        self.start("agent", [str(BIN / "gatehouse"), "agent", "run", str(site_file)])
        wait_port(self.reader_port)

    def rpc(self):
        from nameko.standalone.rpc import ClusterRpcProxy
        return ClusterRpcProxy({"AMQP_URI": self.amqp_uri, "serializer": "json"}, timeout=15)

    def seed(self, valid_until_past: str) -> None:
        """site1: gates north and garage; Ann (resident, north), Bob (staff, both), Cy (expired)."""
        with self.rpc() as rpc:
            a = rpc.access
            a.create_site(self.site_id, "Test Estate", "Asia/Shanghai")
            a.add_gate(self.site_id, "north", "North gate")
            a.add_gate(self.site_id, "garage", "Garage door")
            a.create_group(self.site_id, "residents", "Residents", ["north"])
            a.create_group(self.site_id, "staff", "Staff", ["north", "garage"])
            a.add_unit(self.site_id, "1-1-101", "1", "1", "101")
            for pid, name, kind, group, card, until in (
                    ("ann", "Ann", "resident", "residents", "1001", None),
                    ("bob", "Bob", "staff", "staff", "2001", None),
                    ("cy", "Cy", "resident", "residents", "3001", valid_until_past)):
                a.add_person(self.site_id, pid, name, kind, "1-1-101" if kind == "resident" else None)
                a.add_to_group(group, pid)
                a.issue_card(pid, card, "2020-01-01T00:00:00+00:00" if until else None, until)

    # -- talking to the agent -------------------------------------------------------------------

    def present(self, device: str, card: str | None = None, **credential) -> dict:
        """A card (or pin=..., qr=...) at a reader, answered by the agent."""
        request = {"device_id": device, **({"card_number": card} if card is not None else credential)}
        with socket.create_connection(("127.0.0.1", self.reader_port), timeout=10) as conn:
            conn.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(conn.makefile().readline())

    def agent_db(self):
        import sqlite3
        return sqlite3.connect(self.tmp / "edge" / "agent.db", timeout=10)

    def agent_cached(self, card: str) -> tuple | None:
        with self.agent_db() as db:
            return db.execute("SELECT status, group_ids FROM credentials WHERE card_number = ?", (card,)).fetchone()

    def outbox_size(self) -> int:
        with self.agent_db() as db:
            return db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def events(self, **filters) -> list[dict]:
        """Every stored access event for the site, oldest first (via the access service)."""
        out, before = [], None
        with self.rpc() as rpc:
            while True:
                page = rpc.access.list_events(site_id=self.site_id, limit=500, before=before, **filters)
                out.extend(page["events"])
                before = page["next_before"]
                if before is None:
                    return list(reversed(out))


@contextlib.contextmanager
def private_vhost(base_uri: str):
    """A fresh RabbitMQ vhost on a local broker, deleted afterwards, so no queue or message of
    another run can leak in. Elsewhere (a remote broker, no rabbitmqctl) the base URI itself."""
    ctl = rabbitmqctl()
    parsed = urllib.parse.urlparse(base_uri)
    if not ctl or parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        yield base_uri
        return
    vhost = f"gh-test-{uuid.uuid4().hex[:10]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, parsed.username or "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    try:
        yield parsed._replace(path="/" + vhost).geturl()
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True)


def rabbitmqctl() -> str | None:
    return shutil.which("rabbitmqctl") or (os.path.exists("/usr/sbin/rabbitmqctl") and "/usr/sbin/rabbitmqctl") or None
