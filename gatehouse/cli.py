"""The `gatehouse` command: for operators and demos."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import urllib.error
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
    url = f"http://{settings.console_address()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
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
@click.argument("card_number")
@click.option("--device", required=True, help="The turnstile's device id, e.g. t1.")
@click.option("--reader", default="127.0.0.1:7101", show_default=True, help="The agent's reader port.")
def present(card_number, device, reader):
    """Present a card at a turnstile's reader and print the agent's decision."""
    host, port = reader.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(json.dumps({"device_id": device, "card_number": card_number}).encode() + b"\n")
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
    """Open a gate remotely (pushed to its agent)."""
    with _rpc() as rpc:
        _print(rpc.access.request_gate_open(site, gate_id, requested_by, reason))


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


if __name__ == "__main__":
    main()
