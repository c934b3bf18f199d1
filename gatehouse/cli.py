"""The `gatehouse` command: for operators and demos."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

import click

from gatehouse import settings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")


@click.group()
def main():
    """Gatehouse: gate access, parking, patrol, billing and notifications."""


def _rpc():
    from nameko.standalone.rpc import ClusterRpcProxy
    return ClusterRpcProxy(settings.nameko_config(), timeout=10)


def _console_get(path: str) -> dict:
    return _console("GET", path)


def _console(method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 10):
    """Call the console API; its JSON error becomes the command's error message."""
    url = f"http://{settings.console_address()}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{url}: {exc.code} {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise click.ClickException(f"the console does not answer at {url} ({exc}); is `make run` running?") from None


def _print(obj) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))


@main.command()
@click.option("--service", "services", multiple=True, help="Only this service (repeatable).")
def migrate(services):
    """Create or upgrade every service's database schema."""
    from gatehouse.db import SERVICES_WITH_DATA
    from gatehouse.db import migrate as run
    target = settings.database_url() or f"SQLite files under {settings.var_dir()}"
    for service in services or SERVICES_WITH_DATA:
        run(service)
        click.echo(f"migrated {service} ({target if settings.database_url() is None else 'PostgreSQL schema ' + service})")


@main.command()
def status():
    """Each service's state and the edge agents, from the console."""
    _print(_console_get("/api/health"))


@main.command()
@click.option("--site", default=None)
@click.option("--kind", default=None)
@click.option("--limit", default=20, show_default=True)
def events(site, kind, limit):
    """Recent access events, newest first, in the site's local time."""
    query = f"?limit={limit}" + (f"&site_id={site}" if site else "") + (f"&kind={kind}" if kind else "")
    for e in _console_get(f"/api/events{query}")["events"]:
        click.echo(f"{e['device_time_local'][:19]}{e['device_time_local'][26:]}  {e['site_id']}/{e['device_id']:<6} {e['kind']:<16} "
                   f"card={e['card_number'] or '-':<8} {e['reason'] or '':<18} {'offline' if e['offline'] else ''}")


@main.command()
@click.argument("card_number", required=False)
@click.option("--device", required=True, help="The turnstile's device id, e.g. t1.")
@click.option("--pin", default=None, help="A PIN typed at the keypad instead of a card.")
@click.option("--qr", "qr_code", default=None, help="A scanned QR code (GH1....) instead of a card.")
@click.option("--reader", default="127.0.0.1:7101", show_default=True, help="The agent's reader port.")
def present(card_number, device, pin, qr_code, reader):
    """Present a card (or --pin, or --qr) at a turnstile's reader and print the agent's decision."""
    given = {k: v for k, v in (("card_number", card_number), ("pin", pin), ("qr", qr_code)) if v}
    if len(given) != 1:
        raise click.UsageError("give exactly one of CARD_NUMBER, --pin, --qr")
    host, port = reader.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(json.dumps({"device_id": device, **given}).encode() + b"\n")
            reply = conn.makefile().readline()
    except OSError as exc:
        raise click.ClickException(f"no agent answers at {reader}: {exc}") from None
    _print(json.loads(reply))


# -- agents -------------------------------------------------------------------------------------

@main.group()
def agent():
    """Edge agents: register them at the centre, run one."""


@agent.command("register")
@click.argument("agent_id")
@click.option("--site", required=True)
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Write the secret here instead of printing it.")
def agent_register(agent_id, site, secret_file):
    """Register (or re-key) an agent; its secret is shown once."""
    from gatehouse.db import engine_for
    from services.edgelink.agents import register
    secret = register(engine_for("edgelink"), agent_id, site)
    if secret_file:
        with open(secret_file, "w") as f:
            f.write(secret + "\n")
        click.echo(f"registered {agent_id} for site {site}; secret written to {secret_file}")
    else:
        click.echo(secret)


@agent.command("run")
@click.argument("site_file", type=click.Path(dir_okay=False))
def agent_run(site_file):
    """Run the edge agent for a site file (YAML)."""
    from edge.agent import run
    from edge.config import ConfigError, load_site
    from gatehouse import logs
    try:
        loaded = load_site(site_file)
    except ConfigError as exc:
        click.echo(f"agent: bad configuration: {exc}", err=True)
        sys.exit(2)
    logs.setup(f"agent:{loaded.site.agent_id}")
    asyncio.run(run(loaded))


# -- people and cards ----------------------------------------------------------------------------

@main.group()
def card():
    """Issue and revoke cards."""


@card.command("issue")
@click.argument("card_number")
@click.option("--person", required=True)
@click.option("--valid-from", default=None)
@click.option("--valid-until", default=None)
def card_issue(card_number, person, valid_from, valid_until):
    with _rpc() as rpc:
        _print(rpc.access.issue_card(person, card_number, valid_from, valid_until))


@card.command("revoke")
@click.argument("card_number")
@click.option("--site", required=True)
def card_revoke(card_number, site):
    with _rpc() as rpc:
        rpc.access.revoke_card(site, card_number)
    click.echo(f"revoked {card_number}")


@main.command("open")
@click.argument("gate_id")
@click.option("--site", required=True)
@click.option("--by", "requested_by", required=True)
@click.option("--reason", required=True)
def open_gate(gate_id, site, requested_by, reason):
    """Open a gate remotely (through the console: refused when the gate's agent is offline)."""
    _print(_console("POST", f"/api/sites/{site}/gates/{gate_id}/open",
                    {"requested_by": requested_by, "reason": reason}))


@main.command("qr")
@click.argument("person_id")
@click.option("--minutes", default=5, show_default=True)
def person_qr(person_id, minutes):
    """A short-lived QR code for a person (what a resident's phone shows)."""
    click.echo(_console("POST", f"/api/people/{person_id}/qr", {"minutes": minutes})["code"])


@main.command("visitor")
@click.argument("name")
@click.option("--site", required=True)
@click.option("--host-unit", required=True, help="The unit visited, e.g. 1-2-301.")
@click.option("--purpose", required=True)
@click.option("--by", "registered_by", required=True, help="Who registers: a resident's id or the guard house.")
@click.option("--hours", default=4, show_default=True, help="The pass is valid from now for this long.")
@click.option("--uses", default=4, show_default=True, help="Passages allowed.")
@click.option("--gate", "gate_ids", multiple=True, help="Allowed gate (repeatable; default every gate).")
@click.option("--id-number", default=None, help="Walk-in: the ID document number (stored masked).")
@click.option("--svg", type=click.Path(dir_okay=False), help="Write the pass's QR code here as SVG.")
def visitor(name, site, host_unit, purpose, registered_by, hours, uses, gate_ids, id_number, svg):
    """Register a visitor and print the pass (QR code)."""
    from datetime import UTC, datetime, timedelta
    start = datetime.now(UTC) - timedelta(minutes=1)
    body = {"name": name, "purpose": purpose, "registered_by": registered_by, "host_unit_id": host_unit,
            "expected_from": start.isoformat(), "expected_until": (start + timedelta(hours=hours)).isoformat(),
            "max_uses": uses, "walk_in": bool(id_number)}
    if gate_ids:
        body["gate_ids"] = list(gate_ids)
    if id_number:
        body["id_number"] = id_number
    result = _console("POST", f"/api/sites/{site}/visitors", body)
    if svg:
        with open(svg, "w") as f:
            f.write(result["qr_svg"])
    _print({k: v for k, v in result.items() if k != "qr_svg"})


@main.command("alarms")
@click.option("--site", required=True)
@click.option("--all", "show_all", is_flag=True, help="Cleared ones too.")
def alarms(site, show_all):
    """Alarms at a site: open ones (raised or acknowledged) unless --all."""
    for alarm in _console("GET", f"/api/sites/{site}/alarms" + ("" if show_all else "?state=open")):
        by = f" by {alarm['acknowledged_by']}" if alarm.get("acknowledged_by") else ""
        click.echo(f"{alarm['alarm_id']:>6}  {alarm['state']:<12}{by:<14} {alarm['kind']:<24} "
                   f"{alarm['gate_id']:<14} {alarm['raised_at']}")


@main.command("ack")
@click.argument("alarm_id", type=int)
@click.option("--operator", required=True)
@click.option("--clear", is_flag=True, help="Close the alarm, not only acknowledge it.")
def acknowledge(alarm_id, operator, clear):
    """Acknowledge (or --clear) an alarm."""
    _print(_console("POST", f"/api/alarms/{alarm_id}/{'clear' if clear else 'acknowledge'}", {"operator": operator}))


@main.command("emergency")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--site", required=True)
@click.option("--by", "actor", required=True)
@click.option("--reason", default="")
def emergency(state, site, actor, reason):
    """Emergency mode: every turnstile of the site free in the exit direction (on), or back (off)."""
    _print(_console("POST", f"/api/sites/{site}/emergency", {"active": state == "on", "actor": actor,
                                                             "reason": reason}))


@main.command("presence")
@click.option("--site", required=True)
@click.option("--zone", default=None)
def presence(site, zone):
    """Who is inside each zone now (for an evacuation roll call)."""
    people = _console("GET", f"/api/sites/{site}/presence" + (f"?zone_id={zone}" if zone else ""))
    for p in people:
        click.echo(f"{p['zone_id']:<12} {p['person_id']:<14} {p.get('name') or '':<16} since {p['since']} "
                   f"via {p['gate_id']}")
    click.echo(f"{len(people)} inside")


@main.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--site", required=True)
@click.option("--kind", type=click.Choice(["units", "people"]), default=None,
              help="For a CSV or a one-sheet workbook; a workbook with sheets 'units' and 'people' needs none.")
@click.option("--valid-only", is_flag=True, help="Import the valid rows even though others have errors.")
@click.option("--dry-run", is_flag=True, help="Check every row, import nothing.")
@click.option("--by", "actor", default="cli", show_default=True)
def import_file(path, site, kind, valid_only, dry_run, actor):
    """Bulk import units or people (with cards, PINs, groups) from CSV or XLSX.

    Every row is checked first, with a progress bar; a file with errors imports nothing unless
    --valid-only. The access service checks again and writes everything in one transaction.
    """
    from pathlib import Path

    from services.access import importing
    data = Path(path).read_bytes()
    try:
        tables = importing.read_table(Path(path).name, data, kind)
    except importing.ImportFileError as exc:
        raise click.ClickException(str(exc)) from None
    with _rpc() as rpc:
        context = rpc.access.import_context(site)
    from services.access.bulk import PinKeys
    existing = importing.Existing(timezone=context["timezone"], pins=PinKeys(site, context["pin_keys"]),
                                  **{k: frozenset(context[k]) for k in ("person_ids", "unit_ids", "card_numbers",
                                                                        "group_ids")})
    total = sum(len(rows) for rows in tables.values())
    with click.progressbar(length=total, label="checking rows", file=sys.stderr) as bar:
        done = [0]

        def progress(n, _total):
            bar.update(n - done[0])
            done[0] = n
        plan = importing.plan_import(tables, existing, progress)
    for row in plan.report:
        if row.errors:
            click.echo(f"{row.sheet} row {row.row} ({row.key or '?'}): " + "; ".join(row.errors), err=True)
    click.echo(f"{plan.row_count} rows, {plan.error_count} with errors", err=True)
    if dry_run or (plan.error_count and not valid_only):
        raise SystemExit(0 if dry_run and not plan.error_count else 1)
    query = f"?filename={urllib.parse.quote(Path(path).name)}&actor={urllib.parse.quote(actor)}"
    query += (f"&kind={kind}" if kind else "") + ("&valid_only=1" if valid_only else "")
    click.echo("importing ...", err=True)
    _print(_console("POST", f"/api/sites/{site}/imports{query}", raw=data, timeout=180))


# -- plate recognition --------------------------------------------------------------------------

@main.group()
def lpr():
    """Licence-plate recognition, as the lane cameras' agent runs it."""


@lpr.command("read")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def lpr_read(images):
    """Read the plates in camera frames: one JSON line per image (file, plate, colour,
    confidence, box, ms), the best read first; a frame that cannot be read says why."""
    from edge import lpr as recognition
    for path in images:
        try:
            with open(path, "rb") as f:
                data = f.read()
            started = time.perf_counter()
            reads = recognition.read_frame(data)
            ms = (time.perf_counter() - started) * 1000
        except OSError as exc:
            click.echo(json.dumps({"file": path, "error": f"cannot read the file: {exc.strerror}"}, ensure_ascii=False))
            continue
        except recognition.FrameError as exc:
            click.echo(json.dumps({"file": path, "error": str(exc)}, ensure_ascii=False))
            continue
        best = reads[0] if reads else None
        click.echo(json.dumps({
            "file": path, "plate": best.text if best else None, "colour": best.colour if best else None,
            "confidence": round(best.confidence, 3) if best else None, "box": list(best.box) if best else None,
            "ms": round(ms, 1),
            "others": [{"plate": r.text, "confidence": round(r.confidence, 3)} for r in reads[1:]]},
            ensure_ascii=False))


@main.command("camera")
@click.argument("lane_id")
@click.option("--plate", default=None, help="What a plate-reading camera sends: the plate it read.")
@click.option("--confidence", default=0.97, show_default=True)
@click.option("--frame", type=click.Path(exists=True, dir_okay=False), help="A camera frame for the agent to read.")
@click.option("--heartbeat", is_flag=True, help="Only say the camera is alive (no read).")
@click.option("--every", type=float, default=None,
              help="With --heartbeat: keep saying so every this many seconds (a simulated camera).")
@click.option("--reader", default="127.0.0.1:7101", show_default=True, help="The agent's reader port.")
def camera(lane_id, plate, confidence, frame, heartbeat, every, reader):
    """A lane camera's read (or frame, or heartbeat) at the agent: prints the lane's answer."""
    import base64
    if sum(map(bool, (plate, frame, heartbeat))) != 1:
        raise click.UsageError("give one of --plate, --frame or --heartbeat")
    if every is not None:
        if not heartbeat or every <= 0:
            raise click.UsageError("--every needs --heartbeat and a positive number of seconds")
        _camera_alive(lane_id, reader, every)
    if heartbeat:
        request = {"lane_id": lane_id, "heartbeat": True}
    else:
        request = {"lane_id": lane_id, **({"plate": plate, "confidence": confidence} if plate else
                                          {"frame_b64": base64.b64encode(open(frame, "rb").read()).decode()})}
    host, port = reader.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(json.dumps(request, ensure_ascii=False).encode() + b"\n")
            reply = conn.makefile(encoding="utf-8").readline()
    except OSError as exc:
        raise click.ClickException(f"no agent answers at {reader}: {exc}") from None
    _print(json.loads(reply))


def _camera_alive(lane_id: str, reader: str, every: float) -> None:
    """A simulated camera's keep-alive, forever; an agent that is not there yet is waited for."""
    import time
    host, port = reader.rsplit(":", 1)
    line = json.dumps({"lane_id": lane_id, "heartbeat": True}).encode() + b"\n"
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(line)
                conn.makefile(encoding="utf-8").readline()
        except OSError:
            pass
        time.sleep(every)


@main.command("pay")
@click.argument("plate")
@click.option("--lot", required=True)
@click.option("--by", "recorded_by", required=True, help="The cashier.")
@click.option("--payment-id", default=None, help="The terminal's idempotency key (default: a new one).")
def pay(plate, lot, recorded_by, payment_id):
    """The cashier takes what a car owes now (cash); the exit lane opens if the car is waiting."""
    import uuid
    from urllib.parse import quote
    sessions = _console("GET", f"/api/lots/{lot}/sessions?status=open&plate={quote(plate)}")
    if not sessions:
        raise click.ClickException(f"no car {plate} is inside {lot}")
    session_id = sessions[0]["session_id"]
    due = _console("GET", f"/api/parking-sessions/{session_id}/quote")
    if due["due_fen"] <= 0:
        click.echo(f"{plate} owes nothing ({due['reason']})")
        return
    _print(_console("POST", f"/api/parking-sessions/{session_id}/payments", {
        "payment_id": payment_id or f"cli-{uuid.uuid4()}", "amount_fen": due["due_fen"], "method": "cash",
        "recorded_by": recorded_by}))


# -- simulators and the demo ---------------------------------------------------------------------

@main.group()
def sim():
    """Simulated devices: run them, and drive their inputs."""


@sim.command("serve")
@click.option("--profile", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", "ports", multiple=True, type=int, required=True)
def sim_serve(profile, host, ports):
    """Run simulated turnstiles, one per port."""
    from edge.sim.turnstile import serve
    from gatehouse import logs
    logs.setup("sim")
    asyncio.run(serve(profile, host, list(ports)))


_sim_options = [click.option("--port", type=int, required=True),
                click.option("--host", default="127.0.0.1", show_default=True),
                click.option("--profile", default=str(settings.ROOT / "edge/profiles/turnstile-generic.yaml"),
                             show_default=True)]


def _with_sim_options(fn):
    for option in reversed(_sim_options):
        fn = option(fn)
    return fn


def _drive_sim(port, host, profile, action=None):
    """Do `action(host, port, profile)` on a simulated turnstile, then print its state."""
    from edge.profiles import load_profile
    from edge.sim.turnstile import read_state

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # the error below says it once
    loaded = load_profile(profile)

    async def run():
        if action is not None:
            await action(host, port, loaded)
        return await read_state(host, port, loaded)
    try:
        _print(asyncio.run(run()))
    except (ConnectionError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@sim.command("passage")
@_with_sim_options
def sim_passage(port, host, profile):
    """Someone walks through (counts only if the turnstile is unlocked)."""
    from edge.sim.turnstile import trigger
    _drive_sim(port, host, profile, lambda h, p, prof: trigger(h, p, prof, "passage"))


@sim.command("force")
@_with_sim_options
def sim_force(port, host, profile):
    """Someone forces the turnstile."""
    from edge.sim.turnstile import trigger
    _drive_sim(port, host, profile, lambda h, p, prof: trigger(h, p, prof, "forced"))


@sim.command("fault")
@_with_sim_options
@click.argument("code", type=int)
def sim_fault(port, host, profile, code):
    """Set the fault register (0 clears it)."""
    from edge.sim.turnstile import set_fault
    _drive_sim(port, host, profile, lambda h, p, prof: set_fault(h, p, prof, code))


@sim.command("door")
@_with_sim_options
@click.option("--open/--closed", "is_open", required=True, help="Arm / door out of or back in its home position.")
def sim_door(port, host, profile, is_open):
    """Open (--open) or close (--closed) the arm / door."""
    from edge.sim.turnstile import set_door_open
    _drive_sim(port, host, profile, lambda h, p, prof: set_door_open(h, p, prof, is_open))


@sim.command("emergency")
@_with_sim_options
@click.option("--on/--off", "active", required=True, help="Fire panel's emergency input active or released.")
def sim_emergency(port, host, profile, active):
    """Activate (--on) or release (--off) the emergency input."""
    from edge.sim.turnstile import set_emergency
    _drive_sim(port, host, profile, lambda h, p, prof: set_emergency(h, p, prof, active))


@sim.command("state")
@_with_sim_options
def sim_state(port, host, profile):
    """Read a simulated turnstile's state over Modbus."""
    _drive_sim(port, host, profile)


@main.group()
def demo():
    """The small demo estate `make run` starts."""


@demo.command("seed")
def demo_seed():
    """Create the demo site, gates, people, groups and cards (idempotent)."""
    from gatehouse.demo import seed
    with _rpc() as rpc:
        for line in seed(rpc):
            click.echo(line)


# each area's commands live in a module of their own
from gatehouse.cli_billing import billing as _billing  # noqa: E402
from gatehouse.cli_notify import notify as _notify  # noqa: E402
from gatehouse.cli_patrol import patrol as _patrol  # noqa: E402

for _group in (_billing, _patrol, _notify):
    main.add_command(_group)

if __name__ == "__main__":
    main()
