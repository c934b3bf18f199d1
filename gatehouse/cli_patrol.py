"""`gatehouse patrol ...`: the patrol commands (wired into gatehouse.cli).

walk/sync are a simulated handheld talking gRPC to the handheld server (PATROL_HANDHELD_ADDRESS,
default 127.0.0.1:50052); the others ask the patrol service over the bus.
"""
from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from gatehouse import settings


def _address() -> str:
    from services.patrol.handheld import address
    return address()


def _default_outbox() -> Path:
    return settings.var_dir() / "handheld-outbox.json"


def _handheld(outbox: Path):
    from services.patrol.simulator import Handheld
    return Handheld(_address(), outbox)


def _grpc_error(exc) -> click.ClickException:
    return click.ClickException(f"handheld server at {_address()}: {exc.code().name}: {exc.details()}")


def _show(name: str, outcome: str, reason: str = "", detail: str = "", flags=()) -> None:
    colour = {"stored": "green", "duplicate": "cyan", "refused": "red", "kept offline": "yellow"}.get(outcome)
    extra = f" {reason}: {detail}" if reason else ""
    marks = f" [{', '.join(flags)}]" if flags else ""
    click.echo(f"  {name:<24} " + click.style(f"{outcome:<12}", fg=colour) + marks + extra)


@click.group("patrol")
def patrol():
    """Patrol: a simulated guard's handheld (walk, sync), rounds, review, reports, hazards."""


@patrol.command()
@click.argument("route_id")
@click.option("--guard", "guard_id", required=True, help="The guard walking (e.g. p-wangfang).")
@click.option("--pin", required=True, help="The guard's PIN.")
@click.option("--offline-after", type=int, default=None,
              help="Lose the signal after this many scans: the rest wait in the outbox file.")
@click.option("--skip", multiple=True, help="A checkpoint id not to scan (repeatable).")
@click.option("--outbox", type=click.Path(path_type=Path), default=None, help="The handheld's outbox file.")
def walk(route_id, guard_id, pin, offline_after, skip, outbox):
    """Walk ROUTE_ID's open round as GUARD: scan each checkpoint (NFC UID or the printed QR code)."""
    import grpc

    from gatehouse.cli import _rpc
    outbox = outbox or _default_outbox()
    hh = _handheld(outbox)
    try:
        hh.sign_in(guard_id, pin)
        with _rpc() as rpc:       # the QR codes printed at the checkpoints
            printed = {c["checkpoint_id"]: c.get("qr_code", "") for c in rpc.patrol.route(route_id)["checkpoints"]}
        rnd, steps = hh.walk(route_id, printed, skip, offline_after)
    except grpc.RpcError as exc:
        raise _grpc_error(exc) from None
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hh.close()
    click.echo(f"round {rnd.round_id} of {route_id}, planned {rnd.planned_start.ToDatetime(UTC).isoformat()}")
    for s in steps:
        _show(s.name, s.outcome, s.reason, s.detail, s.flags)
    if hh.pending():
        click.echo(f"{hh.pending()} scan(s) kept in {outbox}; `gatehouse patrol sync` uploads them")


@patrol.command()
@click.option("--outbox", type=click.Path(path_type=Path), default=None, help="The handheld's outbox file.")
@click.option("--guard", "guard_id", default=None, help="Sign in again as this guard (if the token expired).")
@click.option("--pin", default=None)
def sync(outbox, guard_id, pin):
    """Back in signal: upload what the handheld kept offline, and show the centre's answer per scan."""
    import grpc
    outbox = outbox or _default_outbox()
    if not outbox.exists():
        raise click.ClickException(f"no handheld outbox at {outbox}")
    hh = _handheld(outbox)
    try:
        if guard_id and pin:
            hh.sign_in(guard_id, pin)
        names = {s["scan_id"]: s["tag"][:24] for s in hh.state["pending"]}
        results = hh.sync()
    except grpc.RpcError as exc:
        raise _grpc_error(exc) from None
    finally:
        hh.close()
    for r in results:
        _show(r.checkpoint_id or names.get(r.scan_id, r.scan_id), r.outcome, r.reason, r.detail, tuple(r.flags))
    click.echo(f"{len(results)} scan(s) uploaded; {hh.pending()} left")


@patrol.command()
@click.option("--site", "site_id", default="demo")
@click.option("--status", default=None)
@click.option("--route", "route_id", default=None)
@click.option("--limit", type=int, default=20)
def rounds(site_id, status, route_id, limit):
    """The site's rounds, newest first."""
    from gatehouse.cli import _rpc
    with _rpc() as rpc:
        rows = rpc.patrol.list_rounds(site_id, status, route_id, None, None, None, limit)
    for r in rows:
        result = r["result"] or {}
        missing = f" missing {', '.join(result['missing'])}" if result.get("missing") else ""
        click.echo(f"{r['planned_start']}  {r['route_id']:<14} {r['status']:<11} {r['assigned_to'] or '':<14} "
                   f"{r['round_id']}{missing}")


@patrol.command("round")
@click.argument("round_id")
def round_(round_id):
    """One round with its scans."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        _print(rpc.patrol.round(round_id))


@patrol.command()
@click.option("--site", "site_id", default="demo")
def review(site_id):
    """Scans a supervisor should look at (late, untrusted time, anomalies) and refused ones."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        _print(rpc.patrol.review(site_id, 50))


@patrol.command()
@click.argument("scan_id")
@click.argument("verdict", type=click.Choice(["accepted", "rejected"]))
@click.option("--by", "reviewer", required=True, help="Who reviewed it.")
@click.option("--note", default="")
def verdict(scan_id, verdict, reviewer, note):
    """A supervisor's verdict on a flagged scan (a rejected scan no longer counts for its round)."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        _print(rpc.patrol.review_scan(scan_id, reviewer, verdict, note))


@patrol.command()
@click.option("--site", "site_id", default="demo")
@click.option("--days", type=int, default=7, help="The last this many days (until now).")
@click.option("--by", type=click.Choice(["guard", "route"]), default="guard")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write a .csv or .xlsx file instead of printing.")
def report(site_id, days, by, out):
    """Completion and on-time rates and missed checkpoints per guard or route."""
    from gatehouse.cli import _print, _rpc
    until = datetime.now(UTC)
    since = until - timedelta(days=days)
    with _rpc() as rpc:
        if out is None:
            _print(rpc.patrol.report(site_id, since.isoformat(), until.isoformat(), by))
            return
        fmt = out.suffix.lstrip(".").lower()
        if fmt not in ("csv", "xlsx"):
            raise click.ClickException("--out must end in .csv or .xlsx")
        out.write_bytes(base64.b64decode(rpc.patrol.report_file_b64(site_id, since.isoformat(), until.isoformat(),
                                                                    by, fmt)))
    click.echo(f"wrote {out}")


@patrol.command()
@click.option("--site", "site_id", default="demo")
@click.option("--status", default=None)
def hazards(site_id, status):
    """Incidents reported on rounds, as hazards to fix (open, assigned, fixed, verified)."""
    from gatehouse.cli import _print, _rpc
    with _rpc() as rpc:
        _print(rpc.patrol.list_incidents(site_id, status, 50))
