"""The patrol service's storage: plain functions over an SQLAlchemy connection, each called in
one transaction by its caller (the nameko service or the handheld server). What a scan or a
round means is decided by services.patrol.rules; this module keeps the record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets as _secrets
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, delete, insert, or_, select, update

from gatehouse import signing
from gatehouse.db import insert_ignore
from gatehouse.outbox import queue as outbox_queue
from gatehouse.records import InvalidInput, NotFound
from gatehouse.records import now as _now
from gatehouse.records import require as _require
from services.patrol import rules
from services.patrol.tables import (
    alerts,
    batches,
    checkpoints,
    guards,
    incident_steps,
    incidents,
    outbox,
    refused_scans,
    rounds,
    route_checkpoints,
    routes,
    scans,
    schedules,
    secrets,
    shift_members,
    shifts,
    site_keys,
)

__all__ = ["InvalidInput", "NotAssigned", "NotFound"]


class NotAssigned(InvalidInput):
    """The guard acts on a round that is not theirs (the handheld answers PERMISSION_DENIED)."""

QR_PREFIX = "GP1"
SUPERVISOR_ROLE = "patrol_supervisor"
HORIZON_HOURS = 24
MAX_SCANS_PER_BATCH = 500
MAX_TAG_LENGTH = signing.MAX_CODE_LENGTH
LOCK_AFTER_FAILURES = 5
LOCK_MINUTES = 5
ROUND_NS = uuid.UUID("5b0c4e64-2a53-4d1e-9f3a-7c1d2e3f4a5b")
REFUSALS = ("unknown_tag", "qr_signature_invalid", "qr_superseded", "not_assigned", "tag_not_on_route",
            "unknown_round", "bad_scan")


def _plain(row) -> dict:
    out = {}
    for k, v in dict(row).items():
        if isinstance(v, (datetime, date)):
            v = v.isoformat()
        elif isinstance(v, (bytes, memoryview)):
            continue
        out[k] = v
    return out


def _time(value, what: str) -> datetime:
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{what} must be an ISO 8601 time with a zone, got {value!r}") from None
    if t.tzinfo is None:
        raise InvalidInput(f"{what} must carry its time zone (e.g. +08:00 or Z)")
    return t.astimezone(UTC)


def _zone(timezone: str) -> str:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(f"unknown time zone {timezone!r}") from None
    return timezone


def _whole(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}")
    return value


# -- PINs and tokens ---------------------------------------------------------------------------------
# argon2-cffi is not installed here; hashlib.scrypt (memory-hard, in the standard library) is.

_SCRYPT = (1 << 14, 8, 1)


def hash_pin(pin: str) -> str:
    n, r, p = _SCRYPT
    salt = _secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_pin(pin: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def token_secret(conn) -> bytes:
    """The HMAC key for handheld tokens (made on first use; both processes read the same one)."""
    conn.execute(insert_ignore(conn, secrets).values(name="token_hmac", value=_secrets.token_bytes(32)))
    return conn.execute(select(secrets.c.value).where(secrets.c.name == "token_hmac")).scalar_one()


# -- guards and shifts -------------------------------------------------------------------------------

def set_guard(conn, site_id: str, guard_id: str, name: str, pin: str | None = None, active: bool = True) -> dict:
    """Add a guard or change one; a new PIN signs out every handheld the guard was signed in on."""
    if not site_id or not guard_id or not name:
        raise InvalidInput("site_id, guard_id and name are required")
    if pin is not None and (not isinstance(pin, str) or not 4 <= len(pin) <= 64):
        raise InvalidInput("pin must be 4 to 64 characters")
    now = _now()
    row = conn.execute(select(guards).where(guards.c.guard_id == guard_id)).mappings().first()
    if row is None:
        if pin is None:
            raise InvalidInput("a new guard needs a pin")
        conn.execute(insert(guards).values(guard_id=guard_id, site_id=site_id, name=name, pin_hash=hash_pin(pin),
                                           token_epoch=1, active=bool(active), failed_sign_ins=0,
                                           locked_until=None, updated_at=now))
    else:
        if row["site_id"] != site_id:
            raise InvalidInput(f"guard {guard_id!r} belongs to site {row['site_id']!r}")
        values = dict(name=name, active=bool(active), updated_at=now)
        if pin is not None:
            values.update(pin_hash=hash_pin(pin), token_epoch=row["token_epoch"] + 1, failed_sign_ins=0,
                          locked_until=None)
        elif not active and row["active"]:
            values.update(token_epoch=row["token_epoch"] + 1)
        conn.execute(update(guards).where(guards.c.guard_id == guard_id).values(**values))
    return guard(conn, guard_id)


def guard(conn, guard_id: str) -> dict:
    row = _require(conn, guards, guards.c.guard_id, guard_id, "guard")
    out = {k: v for k, v in _plain(row).items() if k != "pin_hash"}
    out["shift_ids"] = guard_shifts(conn, guard_id)
    return out


def list_guards(conn, site_id: str) -> list[dict]:
    rows = conn.execute(select(guards).where(guards.c.site_id == site_id).order_by(guards.c.guard_id)).mappings()
    return [{k: v for k, v in _plain(r).items() if k != "pin_hash"} for r in rows]


def guard_shifts(conn, guard_id: str) -> list[str]:
    return list(conn.execute(select(shift_members.c.shift_id).where(shift_members.c.guard_id == guard_id)
                             .order_by(shift_members.c.shift_id)).scalars())


def set_shift(conn, site_id: str, shift_id: str, name: str, guard_ids: list[str]) -> dict:
    """A shift and exactly these guards in it (rounds may be assigned to the shift)."""
    if not isinstance(guard_ids, list) or not all(isinstance(g, str) for g in guard_ids):
        raise InvalidInput("guard_ids must be a list of guard ids")
    for g in guard_ids:
        if _require(conn, guards, guards.c.guard_id, g, "guard")["site_id"] != site_id:
            raise InvalidInput(f"guard {g!r} is not at site {site_id!r}")
    if conn.execute(select(shifts.c.site_id).where(shifts.c.shift_id == shift_id)).first():
        conn.execute(update(shifts).where(shifts.c.shift_id == shift_id).values(name=name))
    else:
        conn.execute(insert(shifts).values(shift_id=shift_id, site_id=site_id, name=name))
    conn.execute(delete(shift_members).where(shift_members.c.shift_id == shift_id))
    for g in sorted(set(guard_ids)):
        conn.execute(insert(shift_members).values(shift_id=shift_id, guard_id=g))
    return {"shift_id": shift_id, "site_id": site_id, "name": name, "guard_ids": sorted(set(guard_ids))}


def sign_in(conn, guard_id: str, pin: str, now: datetime) -> tuple[dict | None, str]:
    """(the guard, "") or (None, why), in one transaction (the handheld server splits it, so that
    the slow PIN check holds no database lock: sign_in_candidate, check_pin, sign_in_outcome)."""
    row = sign_in_candidate(conn, guard_id)
    return sign_in_outcome(conn, guard_id, row, check_pin(pin or "", row["pin_hash"] if row else _DUMMY_HASH), now)


_DUMMY_HASH = hash_pin("no such guard")     # the same work for an unknown guard: no guard-id oracle


def sign_in_candidate(conn, guard_id: str) -> dict | None:
    row = conn.execute(select(guards).where(guards.c.guard_id == guard_id)).mappings().first()
    return dict(row) if row is not None else None


def sign_in_outcome(conn, guard_id: str, row: dict | None, pin_ok: bool, now: datetime) -> tuple[dict | None, str]:
    """Count a failed attempt (after LOCK_AFTER_FAILURES the guard is locked for LOCK_MINUTES) or
    clear the count; the caller commits either way."""
    if row is None or not row["active"]:
        return None, "unknown or inactive guard, or wrong PIN"
    if row["locked_until"] is not None and row["locked_until"] > now:
        return None, f"too many wrong PINs: signing in is locked until {row['locked_until'].isoformat()}"
    if not pin_ok:
        conn.execute(update(guards).where(guards.c.guard_id == guard_id)
                     .values(failed_sign_ins=guards.c.failed_sign_ins + 1))
        failures = conn.execute(select(guards.c.failed_sign_ins).where(guards.c.guard_id == guard_id)).scalar()
        if failures >= LOCK_AFTER_FAILURES:
            conn.execute(update(guards).where(guards.c.guard_id == guard_id)
                         .values(failed_sign_ins=0, locked_until=now + timedelta(minutes=LOCK_MINUTES)))
        return None, "unknown or inactive guard, or wrong PIN"
    if row["failed_sign_ins"] or row["locked_until"]:
        conn.execute(update(guards).where(guards.c.guard_id == guard_id).values(failed_sign_ins=0, locked_until=None))
    return row, ""


def guard_for_token(conn, guard_id: str, epoch: int) -> dict | None:
    row = conn.execute(select(guards.c.guard_id, guards.c.site_id, guards.c.name, guards.c.token_epoch,
                              guards.c.active).where(guards.c.guard_id == guard_id)).mappings().first()
    if row is None or not row["active"] or row["token_epoch"] != epoch:
        return None
    return {**row, "shift_ids": guard_shifts(conn, guard_id)}


# -- keys and checkpoint QR codes ---------------------------------------------------------------------

def _active_key(conn, site_id: str):
    row = conn.execute(select(site_keys).where(site_keys.c.site_id == site_id, site_keys.c.active.is_(True))
                       .order_by(site_keys.c.created_at.desc())).mappings().first()
    if row is None:
        kid, private, public = signing.new_signing_key()
        conn.execute(insert(site_keys).values(key_id=kid, site_id=site_id, private_key=private, public_key=public,
                                              created_at=_now(), active=True))
        row = {"key_id": kid, "private_key": private}
    return row


def public_keys(conn, site_id: str) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in conn.execute(select(site_keys.c.key_id, site_keys.c.public_key)
                                                 .where(site_keys.c.site_id == site_id))}


def rotate_key(conn, site_id: str) -> dict:
    """A new signing key for the site's checkpoint codes; older codes still verify (print new ones
    and reissue to retire them)."""
    conn.execute(update(site_keys).where(site_keys.c.site_id == site_id).values(active=False))
    return {"site_id": site_id, "key_id": _active_key(conn, site_id)["key_id"]}


def checkpoint_code(conn, checkpoint_id: str) -> str:
    """The signed QR payload to print at a QR checkpoint."""
    cp = _require(conn, checkpoints, checkpoints.c.checkpoint_id, checkpoint_id, "checkpoint")
    if cp["tag_kind"] != "qr":
        raise InvalidInput(f"checkpoint {checkpoint_id!r} has an NFC tag, not a QR code")
    key = _active_key(conn, cp["site_id"])
    return signing.sign(QR_PREFIX, {"site": cp["site_id"], "cp": checkpoint_id, "v": cp["qr_version"]},
                        key["key_id"], bytes(key["private_key"]))


def reissue_code(conn, checkpoint_id: str) -> str:
    """A new code for a checkpoint whose printed code was copied or damaged: the old one is refused."""
    cp = _require(conn, checkpoints, checkpoints.c.checkpoint_id, checkpoint_id, "checkpoint")
    conn.execute(update(checkpoints).where(checkpoints.c.checkpoint_id == checkpoint_id)
                 .values(qr_version=cp["qr_version"] + 1))
    return checkpoint_code(conn, checkpoint_id)


# -- routes ---------------------------------------------------------------------------------------------

def _checkpoint_values(site_id: str, cp: dict, index: int) -> dict:
    if not isinstance(cp, dict):
        raise InvalidInput(f"checkpoint {index + 1} must be an object")
    known = {"checkpoint_id", "name", "tag_kind", "nfc_uid", "latitude", "longitude", "radius_m"}
    unknown = sorted(set(cp) - known)
    if unknown:
        raise InvalidInput(f"checkpoint {index + 1}: unknown field(s) {', '.join(unknown)}")
    cid = cp.get("checkpoint_id")
    if not cid or not isinstance(cid, str) or len(cid) > 64:
        raise InvalidInput(f"checkpoint {index + 1}: checkpoint_id is required (at most 64 characters)")
    kind = cp.get("tag_kind", "nfc")
    if kind not in rules.METHODS:
        raise InvalidInput(f"checkpoint {cid}: tag_kind must be nfc or qr")
    uid = None
    if kind == "nfc":
        try:
            uid = rules.normalize_nfc_uid(cp.get("nfc_uid") or "")
        except ValueError as exc:
            raise InvalidInput(f"checkpoint {cid}: {exc}") from None
    try:
        lat, lon = float(cp["latitude"]), float(cp["longitude"])
        rules.check_position(lat, lon)
        radius = float(cp.get("radius_m", 30))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"checkpoint {cid}: latitude and longitude are required degrees ({exc})") from None
    if not 1 <= radius <= 1000:
        raise InvalidInput(f"checkpoint {cid}: radius_m must be from 1 to 1000")
    return dict(checkpoint_id=cid, site_id=site_id, name=cp.get("name") or cid, tag_kind=kind, nfc_uid=uid,
                latitude=lat, longitude=lon, radius_m=radius)


def set_route(conn, site_id: str, route_id: str, name: str, checkpoints_: list[dict], ordered: bool = True,
              risk_level: str = "normal", timezone: str = "Asia/Shanghai") -> dict:
    """A route and its checkpoints in walking order (checkpoints are the site's; a route may share them)."""
    if not site_id or not route_id or not name:
        raise InvalidInput("site_id, route_id and name are required")
    if risk_level not in rules.RISK_FACTORS:
        raise InvalidInput(f"risk_level must be one of {', '.join(rules.RISK_FACTORS)}")
    _zone(timezone)
    if not isinstance(checkpoints_, list) or not 1 <= len(checkpoints_) <= 200:
        raise InvalidInput("checkpoints must be a list of 1 to 200 checkpoints")
    values = [_checkpoint_values(site_id, cp, i) for i, cp in enumerate(checkpoints_)]
    ids = [v["checkpoint_id"] for v in values]
    if len(set(ids)) != len(ids):
        raise InvalidInput("a checkpoint appears twice in the route")
    uids = [v["nfc_uid"] for v in values if v["nfc_uid"]]
    if len(set(uids)) != len(uids):
        raise InvalidInput("two checkpoints of the route have the same NFC UID")
    route_row = conn.execute(select(routes.c.site_id).where(routes.c.route_id == route_id)).first()
    if route_row and route_row.site_id != site_id:
        raise InvalidInput(f"route {route_id!r} belongs to site {route_row.site_id!r}")
    for v in values:
        existing = conn.execute(select(checkpoints.c.site_id).where(checkpoints.c.checkpoint_id == v["checkpoint_id"])
                                ).first()
        if v["nfc_uid"]:
            other = conn.execute(select(checkpoints.c.checkpoint_id).where(
                checkpoints.c.site_id == site_id, checkpoints.c.nfc_uid == v["nfc_uid"],
                checkpoints.c.checkpoint_id != v["checkpoint_id"])).first()
            if other:
                raise InvalidInput(f"NFC UID {v['nfc_uid']} is already the tag of checkpoint {other.checkpoint_id!r}")
        if existing is None:
            conn.execute(insert(checkpoints).values(qr_version=1, **v))
        elif existing.site_id != site_id:
            raise InvalidInput(f"checkpoint {v['checkpoint_id']!r} belongs to site {existing.site_id!r}")
        else:
            conn.execute(update(checkpoints).where(checkpoints.c.checkpoint_id == v["checkpoint_id"]).values(**v))
    now = _now()
    route_values = dict(site_id=site_id, name=name, ordered=bool(ordered), risk_level=risk_level,
                        timezone=timezone, updated_at=now)
    if route_row:
        conn.execute(update(routes).where(routes.c.route_id == route_id).values(**route_values))
    else:
        conn.execute(insert(routes).values(route_id=route_id, **route_values))
    conn.execute(delete(route_checkpoints).where(route_checkpoints.c.route_id == route_id))
    conn.execute(insert(route_checkpoints), [dict(route_id=route_id, checkpoint_id=c, seq=i + 1)
                                             for i, c in enumerate(ids)])
    _active_key(conn, site_id)
    return route(conn, route_id)


def route_checkpoint_rows(conn, route_ids) -> dict[str, list[dict]]:
    rows = conn.execute(
        select(route_checkpoints.c.route_id, route_checkpoints.c.seq, routes.c.ordered, checkpoints)
        .join(checkpoints, checkpoints.c.checkpoint_id == route_checkpoints.c.checkpoint_id)
        .join(routes, routes.c.route_id == route_checkpoints.c.route_id)
        .where(route_checkpoints.c.route_id.in_(list(route_ids)))
        .order_by(route_checkpoints.c.route_id, route_checkpoints.c.seq)).mappings()
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["route_id"], []).append(dict(r))
    return out


def route(conn, route_id: str, with_codes: bool = True) -> dict:
    row = _require(conn, routes, routes.c.route_id, route_id, "route")
    cps = []
    for cp in route_checkpoint_rows(conn, [route_id]).get(route_id, []):
        item = {k: cp[k] for k in ("checkpoint_id", "name", "seq", "tag_kind", "nfc_uid", "latitude", "longitude",
                                   "radius_m", "qr_version")}
        if with_codes and cp["tag_kind"] == "qr":
            item["qr_code"] = checkpoint_code(conn, cp["checkpoint_id"])
        cps.append(item)
    return {**_plain(row), "checkpoints": cps}


def list_routes(conn, site_id: str) -> list[dict]:
    return [_plain(r) for r in conn.execute(select(routes).where(routes.c.site_id == site_id)
                                            .order_by(routes.c.route_id)).mappings()]


# -- schedules and rounds ------------------------------------------------------------------------------------

def _schedule_spec(spec: dict) -> rules.Schedule:
    if not isinstance(spec, dict):
        raise InvalidInput("the schedule must be an object")
    known = {f.name for f in dataclasses.fields(rules.Schedule)} - {"salt"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise InvalidInput(f"schedule: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fields = dict(spec)
    for name in ("times", "days"):
        if name in fields:
            if not isinstance(fields[name], list | tuple):
                raise InvalidInput(f"schedule: {name} must be a list")
            fields[name] = tuple(fields[name])
    try:
        return rules.Schedule(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"schedule: {exc}") from None


def _assignee(conn, site_id: str, guard_id: str | None, shift_id: str | None) -> None:
    if bool(guard_id) == bool(shift_id):
        raise InvalidInput("assign the rounds to exactly one of guard_id or shift_id")
    if guard_id and _require(conn, guards, guards.c.guard_id, guard_id, "guard")["site_id"] != site_id:
        raise InvalidInput(f"guard {guard_id!r} is not at site {site_id!r}")
    if shift_id and _require(conn, shifts, shifts.c.shift_id, shift_id, "shift")["site_id"] != site_id:
        raise InvalidInput(f"shift {shift_id!r} is not at site {site_id!r}")


def set_schedule(conn, schedule_id: str, route_id: str, spec: dict, guard_id: str | None = None,
                 shift_id: str | None = None, active: bool = True, now: datetime | None = None) -> dict:
    """A route's schedule (see rules.Schedule) assigned to a guard or a shift. Rounds are planned
    HORIZON_HOURS ahead at once; a change re-plans the future rounds nobody has started."""
    r = _require(conn, routes, routes.c.route_id, route_id, "route")
    _assignee(conn, r["site_id"], guard_id, shift_id)
    checked = _schedule_spec(spec)
    now = now or _now()
    row = conn.execute(select(schedules).where(schedules.c.schedule_id == schedule_id)).mappings().first()
    salt = json.loads(row["spec"]).get("salt") if row else None
    stored = dataclasses.asdict(dataclasses.replace(checked, salt=salt or _secrets.token_hex(8)))
    values = dict(site_id=r["site_id"], route_id=route_id, spec=json.dumps(stored), guard_id=guard_id or None,
                  shift_id=shift_id or None, active=bool(active), updated_at=now)
    if row:
        if row["route_id"] != route_id:
            raise InvalidInput(f"schedule {schedule_id!r} is for route {row['route_id']!r}; make a new schedule")
        conn.execute(update(schedules).where(schedules.c.schedule_id == schedule_id).values(**values))
    else:
        conn.execute(insert(schedules).values(schedule_id=schedule_id, **values))
    planned = generate_rounds(conn, now, schedule_id=schedule_id)
    return {**schedule(conn, schedule_id), "rounds_planned": planned}


def schedule(conn, schedule_id: str) -> dict:
    row = _require(conn, schedules, schedules.c.schedule_id, schedule_id, "schedule")
    spec = json.loads(row["spec"])
    spec.pop("salt", None)
    return {**_plain(row), "spec": spec}


def list_schedules(conn, site_id: str) -> list[dict]:
    ids = conn.execute(select(schedules.c.schedule_id).where(schedules.c.site_id == site_id)
                       .order_by(schedules.c.schedule_id)).scalars().all()
    return [schedule(conn, i) for i in ids]


def _round_id(schedule_id: str, start: datetime) -> str:
    return str(uuid.uuid5(ROUND_NS, f"{schedule_id}@{start.astimezone(UTC).isoformat()}"))


def generate_rounds(conn, now: datetime, horizon_hours: int = HORIZON_HOURS, schedule_id: str | None = None) -> int:
    """Plan every schedule's rounds from now to the horizon (idempotent: one round per schedule
    and planned start). Future rounds nobody started that a changed schedule no longer plans
    become expired. Returns how many rounds were added."""
    end = now + timedelta(hours=horizon_hours)
    query = select(schedules, routes.c.risk_level, routes.c.timezone).join(
        routes, routes.c.route_id == schedules.c.route_id)
    if schedule_id:
        query = query.where(schedules.c.schedule_id == schedule_id)
    added = 0
    for s in conn.execute(query).mappings().all():
        spec = rules.Schedule(**{**json.loads(s["spec"]), "times": tuple(json.loads(s["spec"])["times"]),
                                 "days": tuple(json.loads(s["spec"])["days"])})
        starts = rules.planned_starts(spec, s["risk_level"], s["timezone"], now, end) if s["active"] else []
        wanted = {t.astimezone(UTC) for t in starts}
        existing = {r.planned_start: r for r in conn.execute(
            select(rounds.c.round_id, rounds.c.planned_start, rounds.c.status)
            .where(rounds.c.schedule_id == s["schedule_id"], rounds.c.planned_start >= now))}
        lengths = dict(due=timedelta(minutes=spec.expected_minutes),
                       grace=timedelta(minutes=spec.expected_minutes + spec.grace_minutes))
        stale = [r.round_id for t, r in existing.items() if t not in wanted and r.status == "pending"]
        if stale:
            conn.execute(update(rounds).where(rounds.c.round_id.in_(stale), rounds.c.status == "pending")
                         .values(status=rules.round_next("pending", "withdraw"), closed_at=now))
        keep = [r.round_id for t, r in existing.items() if t in wanted and r.status == "pending"]
        for t in sorted(wanted):
            if t in existing:
                continue
            conn.execute(insert_ignore(conn, rounds).values(
                round_id=_round_id(s["schedule_id"], t), site_id=s["site_id"], schedule_id=s["schedule_id"],
                route_id=s["route_id"], guard_id=s["guard_id"], shift_id=s["shift_id"], planned_start=t,
                due_by=t + lengths["due"], grace_until=t + lengths["grace"], status="pending", created_at=now))
            added += 1
        if keep:   # an assignment or duration change applies to the rounds not started yet
            for rid in keep:
                t = next(k for k, r in existing.items() if r.round_id == rid)
                conn.execute(update(rounds).where(rounds.c.round_id == rid, rounds.c.status == "pending").values(
                    guard_id=s["guard_id"], shift_id=s["shift_id"], due_by=t + lengths["due"],
                    grace_until=t + lengths["grace"]))
    return added


def plan_round(conn, route_id: str, planned_start, expected_minutes: int, grace_minutes: int,
               guard_id: str | None = None, shift_id: str | None = None, round_id: str | None = None) -> dict:
    """A round planned by hand (an extra round, a drill); the same round_id again changes nothing."""
    r = _require(conn, routes, routes.c.route_id, route_id, "route")
    _assignee(conn, r["site_id"], guard_id, shift_id)
    start = _time(planned_start, "planned_start")
    _whole(expected_minutes, "expected_minutes", 1, 24 * 60)
    _whole(grace_minutes, "grace_minutes", 0, 12 * 60)
    round_id = round_id or str(uuid.uuid4())
    if len(round_id) > 64:
        raise InvalidInput("round_id is at most 64 characters")
    conn.execute(insert_ignore(conn, rounds).values(
        round_id=round_id, site_id=r["site_id"], schedule_id=None, route_id=route_id, guard_id=guard_id or None,
        shift_id=shift_id or None, planned_start=start, due_by=start + timedelta(minutes=expected_minutes),
        grace_until=start + timedelta(minutes=expected_minutes + grace_minutes), status="pending",
        # a round entered afterwards for a past time (a backfill, the demo) takes scans from its start
        created_at=min(_now(), start - rules.EARLY_ALLOWANCE)))
    return round_detail(conn, round_id)


def _round_out(row) -> dict:
    out = _plain(row)
    out["result"] = json.loads(row["result"]) if row["result"] else None
    out["assigned_to"] = row["guard_id"] or (f"shift:{row['shift_id']}" if row["shift_id"] else None)
    return out


def list_rounds(conn, site_id: str, status: str | None = None, route_id: str | None = None,
                guard_id: str | None = None, since=None, until=None, limit: int = 200) -> list[dict]:
    q = select(rounds).where(rounds.c.site_id == site_id)
    if status:
        if status not in rules.ROUND_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(rules.ROUND_STATUSES)}")
        q = q.where(rounds.c.status == status)
    if route_id:
        q = q.where(rounds.c.route_id == route_id)
    if guard_id:
        q = q.where(or_(rounds.c.guard_id == guard_id, rounds.c.walked_by == guard_id))
    if since:
        q = q.where(rounds.c.planned_start >= _time(since, "since"))
    if until:
        q = q.where(rounds.c.planned_start < _time(until, "until"))
    rows = conn.execute(q.order_by(rounds.c.planned_start.desc()).limit(limit)).mappings()
    return [_round_out(r) for r in rows]


def _scan_out(row) -> dict:
    out = _plain(row)
    out["flags"] = [f for f in row["flags"].split(",") if f]
    out["has_photo"] = row.get("photo") is not None if "photo" in row else False
    return out


def round_detail(conn, round_id: str) -> dict:
    row = _require(conn, rounds, rounds.c.round_id, round_id, "round")
    scan_rows = conn.execute(select(scans).where(scans.c.round_id == round_id).order_by(scans.c.device_time)
                             ).mappings()
    route_name = conn.execute(select(routes.c.name).where(routes.c.route_id == row["route_id"])).scalar()
    return {**_round_out(row), "route_name": route_name, "scans": [_scan_out(s) for s in scan_rows]}


def review_scans(conn, site_id: str, limit: int = 200) -> dict:
    """Scans a supervisor should look at (late, untrusted time, anomalies) and refused scans."""
    flagged = conn.execute(select(scans).where(scans.c.site_id == site_id, scans.c.review.is_(True),
                                               scans.c.verdict.is_(None))
                           .order_by(scans.c.received_at.desc()).limit(limit)).mappings()
    refused = conn.execute(select(refused_scans).where(refused_scans.c.site_id == site_id)
                           .order_by(refused_scans.c.received_at.desc()).limit(limit)).mappings()
    return {"flagged": [_scan_out(s) for s in flagged], "refused": [_plain(r) for r in refused]}


VERDICTS = ("accepted", "rejected")


def review_scan(conn, scan_id: str, reviewer: str, verdict: str, note: str = "", now: datetime | None = None
                ) -> dict:
    """A supervisor's verdict on a flagged scan. A rejected scan no longer counts: its round is
    evaluated again (a complete round goes back to in_progress within its grace, or becomes
    incomplete after it, raising round_missed for the checkpoint now missing)."""
    if verdict not in VERDICTS:
        raise InvalidInput(f"verdict must be one of {', '.join(VERDICTS)}")
    if not reviewer:
        raise InvalidInput("reviewer is required")
    row = _require(conn, scans, scans.c.scan_id, scan_id, "scan")
    if row["verdict"] is not None:
        raise InvalidInput(f"scan {scan_id} was already {row['verdict']} by {row['reviewed_by']}")
    now = now or _now()
    conn.execute(update(scans).where(scans.c.scan_id == scan_id).values(
        verdict=verdict, reviewed_by=reviewer, reviewed_at=now, review_note=(note or "")[:500],
        counted=row["counted"] and verdict == "accepted"))
    if verdict == "rejected" and row["counted"] and row["round_id"]:
        _after_rejection(conn, row["round_id"], now)
    return _scan_out(conn.execute(select(scans).where(scans.c.scan_id == scan_id)).mappings().one())


def _after_rejection(conn, round_id: str, now: datetime) -> None:
    rnd = dict(conn.execute(select(rounds).where(rounds.c.round_id == round_id).with_for_update()).mappings().one())
    cps = route_checkpoint_rows(conn, [rnd["route_id"]]).get(rnd["route_id"], [])
    seq = {c["checkpoint_id"]: c["seq"] for c in cps}
    result, started = _evaluate(conn, rnd, seq, bool(cps[0]["ordered"]) if cps else True)
    values = dict(result=_result_json(result), started_at=started)
    if rnd["status"] == "complete" and not result.all_visited:
        in_grace = now < rnd["grace_until"]
        values.update(status=rules.round_next("complete", "rejected_in_grace" if in_grace else "rejected_after_grace"),
                      on_time=None if in_grace else False, closed_at=None if in_grace else rnd["closed_at"])
    elif rnd["status"] == "complete":
        values.update(on_time=result.on_time)
    conn.execute(update(rounds).where(rounds.c.round_id == round_id).values(**values))
    if values.get("status") == "incomplete":
        _raise_missed(conn, {**rnd, **values}, "checkpoint", result.missing, cps, now)


def scan_photo(conn, scan_id: str) -> bytes:
    photo = conn.execute(select(scans.c.photo).where(scans.c.scan_id == scan_id)).first()
    if photo is None or photo.photo is None:
        raise NotFound(f"no photo for scan {scan_id!r}")
    return bytes(photo.photo)


# -- what a handheld downloads ---------------------------------------------------------------------------

def _assigned(round_row, guard_id: str, shift_ids) -> bool:
    return round_row["guard_id"] == guard_id or (round_row["shift_id"] is not None and round_row["shift_id"] in shift_ids)


def assignments(conn, guard_id: str, now: datetime, hours_ahead: int = 24) -> dict:
    """The guard's rounds (their own and their shifts') from an hour ago to `hours_ahead`, the
    routes they walk, the rounds' scanned checkpoints, and the site's public QR keys."""
    g = _require(conn, guards, guards.c.guard_id, guard_id, "guard")
    shift_ids = guard_shifts(conn, guard_id)
    cond = rounds.c.guard_id == guard_id
    if shift_ids:
        cond = or_(cond, rounds.c.shift_id.in_(shift_ids))
    rows = conn.execute(select(rounds).where(cond, rounds.c.grace_until >= now - timedelta(hours=1),
                                             rounds.c.planned_start <= now + timedelta(hours=hours_ahead),
                                             rounds.c.status != "expired")
                        .order_by(rounds.c.planned_start)).mappings().all()
    ids = [r["round_id"] for r in rows]
    scanned: dict[str, list[str]] = {}
    if ids:
        for rid, cp in conn.execute(select(scans.c.round_id, scans.c.checkpoint_id).where(
                scans.c.round_id.in_(ids), scans.c.counted.is_(True)).distinct()):
            scanned.setdefault(rid, []).append(cp)
    route_ids = sorted({r["route_id"] for r in rows})
    route_rows = {r["route_id"]: dict(r) for r in conn.execute(select(routes).where(routes.c.route_id.in_(route_ids))
                                                              ).mappings()} if route_ids else {}
    cps = route_checkpoint_rows(conn, route_ids) if route_ids else {}
    return {"guard": {"guard_id": guard_id, "name": g["name"], "site_id": g["site_id"]},
            "rounds": [{**_round_out(r), "scanned_checkpoint_ids": sorted(scanned.get(r["round_id"], []))}
                       for r in rows],
            "routes": [{**route_rows[rid], "checkpoints": cps.get(rid, [])} for rid in route_ids],
            "keys": public_keys(conn, g["site_id"])}


# -- scans -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    scan_id: str
    outcome: str                      # stored, duplicate, refused
    reason: str = ""
    detail: str = ""
    round_id: str = ""
    checkpoint_id: str = ""
    flags: list[str] = dataclasses.field(default_factory=list)


def _refuse(scan: dict, reason: str, detail: str) -> Outcome:
    return Outcome(scan["scan_id"], "refused", reason, detail)


def _resolve_tags(conn, site_id: str, new: list[dict], keys: dict[str, bytes]) -> dict[str, object]:
    """scan_id -> checkpoint row, or an Outcome refusing the scan."""
    out: dict[str, object] = {}
    nfc, qr_cps = {}, {}
    for s in new:
        if s["method"] == "nfc":
            try:
                nfc[s["scan_id"]] = rules.normalize_nfc_uid(s["tag"])
            except ValueError:
                out[s["scan_id"]] = _refuse(s, "unknown_tag", f"{s['tag'][:40]!r} is not an NFC tag UID")
        elif s["method"] == "qr":
            try:
                claims = signing.verify(QR_PREFIX, s["tag"], keys, site_id)
            except signing.InvalidCode as exc:
                out[s["scan_id"]] = _refuse(s, "qr_signature_invalid", f"the QR code is not genuine: {exc}")
                continue
            if not isinstance(claims.get("cp"), str) or not isinstance(claims.get("v"), int):
                out[s["scan_id"]] = _refuse(s, "qr_signature_invalid", "the QR code does not name a checkpoint")
                continue
            qr_cps[s["scan_id"]] = claims
        else:
            out[s["scan_id"]] = _refuse(s, "bad_scan", f"method must be nfc or qr, not {s['method']!r}")
    wanted_uids = set(nfc.values())
    wanted_ids = {c["cp"] for c in qr_cps.values()}
    rows = []
    if wanted_uids:
        rows += conn.execute(select(checkpoints).where(checkpoints.c.site_id == site_id,
                                                       checkpoints.c.nfc_uid.in_(wanted_uids))).mappings().all()
    if wanted_ids:
        rows += conn.execute(select(checkpoints).where(checkpoints.c.site_id == site_id,
                                                       checkpoints.c.checkpoint_id.in_(wanted_ids))).mappings().all()
    by_uid = {r["nfc_uid"]: dict(r) for r in rows if r["nfc_uid"]}
    by_id = {r["checkpoint_id"]: dict(r) for r in rows}
    for sid, uid in nfc.items():
        out[sid] = by_uid.get(uid) or Outcome(sid, "refused", "unknown_tag", f"no checkpoint has NFC tag {uid}")
    for sid, claims in qr_cps.items():
        cp = by_id.get(claims["cp"])
        if cp is None or cp["tag_kind"] != "qr":
            out[sid] = Outcome(sid, "refused", "unknown_tag", f"no QR checkpoint {claims['cp']!r} at this site")
        elif claims["v"] != cp["qr_version"]:
            out[sid] = Outcome(sid, "refused", "qr_superseded",
                               f"this QR code of {cp['name']} was replaced by a newer one; report it")
        else:
            out[sid] = cp
    return out


def _validate_scan(s: dict) -> str:
    if not s.get("scan_id") or len(s["scan_id"]) > 64:
        return "scan_id is required (a UUID, at most 64 characters)"
    if len(s.get("tag") or "") > MAX_TAG_LENGTH or not s.get("tag"):
        return "tag is required (at most 1024 characters)"
    if not isinstance(s.get("device_time"), datetime):
        return "device_time is required"
    if s.get("has_location"):
        try:
            rules.check_position(s["latitude"], s["longitude"])
        except ValueError as exc:
            return str(exc)
        if not 0 <= s.get("accuracy_m", 0) <= 100_000:
            return "accuracy_m must be from 0 to 100000"
    if s.get("photo"):
        try:
            rules.photo_kind(s["photo"])
        except ValueError as exc:
            return str(exc)
    return ""


def ingest_batch(conn, guard_row: dict, batch: dict, received_at: datetime, keys: dict[str, bytes] | None = None
                 ) -> dict:
    """Store one uploaded batch of scans. Each scan is stored once (by its scan_id), refused with a
    reason, or answered "duplicate"; returns {"results": [Outcome...], "clock_skew_s": ...}.

    batch: {batch_id, device_id, device_sent_at (datetime|None), scans: [{scan_id, round_id, method,
    tag, device_time (datetime), has_location, latitude, longitude, accuracy_m, photo (bytes|None)}]}"""
    guard_id, site_id = guard_row["guard_id"], guard_row["site_id"]
    items = batch["scans"]
    if len(items) > MAX_SCANS_PER_BATCH:
        raise InvalidInput(f"a batch holds at most {MAX_SCANS_PER_BATCH} scans, this one {len(items)}")
    ids = [s.get("scan_id") for s in items]
    if len(set(ids)) != len(ids):
        raise InvalidInput("the same scan_id appears twice in the batch")
    skew = rules.clock_skew_s(batch.get("device_sent_at"), received_at)
    skew_ms = None if skew is None else int(skew * 1000)
    _record_batch(conn, site_id, guard_id, batch, received_at, skew_ms)

    results: dict[str, Outcome] = {}
    for s in items:
        problem = _validate_scan(s)
        if problem:
            results[s.get("scan_id") or ""] = _refuse(s, "bad_scan", problem)
    ids = [i for i in ids if i not in results]
    if ids:
        for r in conn.execute(select(scans.c.scan_id, scans.c.round_id, scans.c.checkpoint_id, scans.c.flags,
                                     scans.c.guard_id).where(scans.c.scan_id.in_(ids))):
            results[r.scan_id] = Outcome(r.scan_id, "duplicate", round_id=r.round_id or "",
                                         checkpoint_id=r.checkpoint_id, flags=[f for f in r.flags.split(",") if f])
    new = [s for s in items if s["scan_id"] not in results]
    if not new:
        return {"results": [results[i] for i in [s.get("scan_id") or "" for s in items]], "clock_skew_s": skew}

    keys = keys if keys is not None else public_keys(conn, site_id)
    resolved = _resolve_tags(conn, site_id, new, keys)
    shift_ids = guard_row["shift_ids"] if "shift_ids" in guard_row else guard_shifts(conn, guard_id)
    times = [s["device_time"] for s in new]
    lo, hi = min(times), max(times)

    # the rounds the scans may belong to: named ones, and the guard's own around the scans' times
    named = {s["round_id"] for s in new if s.get("round_id")}
    cond = rounds.c.guard_id == guard_id
    if shift_ids:
        cond = or_(cond, rounds.c.shift_id.in_(shift_ids))
    window = and_(cond, rounds.c.planned_start <= hi + rules.EARLY_ALLOWANCE, rounds.c.grace_until >= lo)
    query = select(rounds).where(or_(rounds.c.round_id.in_(named), window) if named else window)
    # locked in one order (round_id), so two handhelds of a shift uploading at once cannot deadlock
    round_rows = {r["round_id"]: dict(r) for r in conn.execute(query.order_by(rounds.c.round_id).with_for_update())
                  .mappings()}
    route_cps = route_checkpoint_rows(conn, {r["route_id"] for r in round_rows.values()}) if round_rows else {}
    seq_of = {rid: {c["checkpoint_id"]: c["seq"] for c in cps} for rid, cps in route_cps.items()}
    ordered_of = {rid: bool(cps[0]["ordered"]) for rid, cps in route_cps.items()}

    # the guard's scans just before/after, for walking speed and repeated tags
    recent = conn.execute(select(scans.c.checkpoint_id, scans.c.device_time, checkpoints.c.latitude,
                                 checkpoints.c.longitude)
                          .join(checkpoints, checkpoints.c.checkpoint_id == scans.c.checkpoint_id)
                          .where(scans.c.guard_id == guard_id,
                                 scans.c.device_time >= lo - timedelta(seconds=rules.REPEAT_WINDOW_S),
                                 scans.c.device_time <= hi + timedelta(seconds=rules.REPEAT_WINDOW_S))).all()
    timeline = [(t, cp, lat, lon) for cp, t, lat, lon in recent]

    rows, refused_rows, touched = [], [], set()
    for s in new:
        sid = s["scan_id"]
        cp = resolved[sid]
        if isinstance(cp, Outcome):
            results[sid] = cp
            continue
        t = s["device_time"]
        rnd, problem = _match_round(s, cp, t, round_rows, seq_of, guard_id, shift_ids)
        if problem:
            results[sid] = _refuse(s, *problem)
            continue
        flags = rules.time_flags(t, received_at, rnd["created_at"] if rnd else None)
        timing = "untrusted" if flags else (
            rules.timing(t, rnd["planned_start"], rnd["due_by"], rnd["grace_until"]) if rnd else "no_round")
        if timing in ("late", "early", "after_grace"):
            flags.append(timing)
        if s.get("has_location") and rules.outside_radius(cp["latitude"], cp["longitude"], cp["radius_m"],
                                                          s["latitude"], s["longitude"], s.get("accuracy_m", 0)):
            flags.append("outside_radius")
        if not {"future_time", "ancient_time"} & set(flags):
            flags += _anomalies(timeline, cp, t)
        timeline.append((t, cp["checkpoint_id"], cp["latitude"], cp["longitude"]))
        counted = bool(rnd) and timing in ("on_time", "late") and rnd["status"] != "expired"
        if counted and rnd["status"] in rules.MISSED_STATUSES:
            # walked in time but synced after the round was closed as missed (an hour without
            # signal): it counts, the round is reconciled, and a supervisor should look at it
            flags.append("synced_after_close")
        review = bool(set(flags) - {"no_round"})
        rows.append(dict(scan_id=sid, site_id=site_id, guard_id=guard_id, device_id=batch.get("device_id") or "",
                         batch_id=batch["batch_id"], round_id=rnd["round_id"] if rnd else None,
                         checkpoint_id=cp["checkpoint_id"], method=s["method"], device_time=t,
                         received_at=received_at, clock_skew_ms=skew_ms,
                         latitude=s["latitude"] if s.get("has_location") else None,
                         longitude=s["longitude"] if s.get("has_location") else None,
                         accuracy_m=s.get("accuracy_m") if s.get("has_location") else None,
                         photo=s.get("photo") or None, timing=timing, counted=counted, flags=",".join(flags),
                         review=review))
        results[sid] = Outcome(sid, "stored", round_id=rnd["round_id"] if rnd else "",
                               checkpoint_id=cp["checkpoint_id"], flags=flags)
        if counted:
            touched.add(rnd["round_id"])

    if rows:
        stored = set(conn.execute(insert_ignore(conn, scans).returning(scans.c.scan_id), rows).scalars())
        for r in rows:
            if r["scan_id"] not in stored:      # the same scan committed meanwhile by a concurrent upload
                results[r["scan_id"]] = Outcome(r["scan_id"], "duplicate", round_id=r["round_id"] or "",
                                                checkpoint_id=r["checkpoint_id"])
    by_id = {s.get("scan_id") or "": s for s in items}
    for sid, res in results.items():
        if res.outcome == "refused" and sid:
            s = by_id[sid]
            refused_rows.append(dict(scan_id=sid, site_id=site_id, guard_id=guard_id,
                                     device_id=batch.get("device_id") or "", reason=res.reason,
                                     detail=res.detail[:300], method=(s.get("method") or "")[:3],
                                     tag=(s.get("tag") or "")[:1100], device_time=s.get("device_time"),
                                     received_at=received_at))
    if refused_rows:
        conn.execute(insert_ignore(conn, refused_scans), refused_rows)
    for rid in sorted(touched):
        route_id = round_rows[rid]["route_id"]
        _advance_round(conn, round_rows[rid], seq_of.get(route_id, {}), ordered_of.get(route_id, True), guard_id,
                       received_at)
    return {"results": [results[i] for i in [s.get("scan_id") or "" for s in items]], "clock_skew_s": skew}


def _record_batch(conn, site_id, guard_id, batch, received_at, skew_ms) -> None:
    if not batch.get("batch_id") or len(batch["batch_id"]) > 64:
        raise InvalidInput("batch_id is required (a UUID, at most 64 characters)")
    added = conn.execute(insert_ignore(conn, batches).values(
        batch_id=batch["batch_id"], site_id=site_id, guard_id=guard_id, device_id=batch.get("device_id") or "",
        device_sent_at=batch.get("device_sent_at"), first_received_at=received_at,
        last_received_at=received_at, clock_skew_ms=skew_ms, uploads=1).returning(batches.c.batch_id)).first()
    if added is None:     # the same batch again (a retry)
        conn.execute(update(batches).where(batches.c.batch_id == batch["batch_id"])
                     .values(last_received_at=received_at, uploads=batches.c.uploads + 1))


def _match_round(s, cp, t, round_rows, seq_of, guard_id, shift_ids):
    """(the round, None) or (None, (reason, detail)); (None, None) is never returned for a named round."""
    cid = cp["checkpoint_id"]
    if s.get("round_id"):
        rnd = round_rows.get(s["round_id"])
        if rnd is None:
            return None, ("unknown_round", f"there is no round {s['round_id']!r}")
        if not _assigned(rnd, guard_id, shift_ids):
            who = rnd["guard_id"] or f"shift {rnd['shift_id']}"
            return None, ("not_assigned", f"round {rnd['round_id']} is assigned to {who}, not to {guard_id}")
        if cid not in seq_of.get(rnd["route_id"], {}):
            return None, ("tag_not_on_route",
                          f"checkpoint {cp['name']} ({cid}) is not on route {rnd['route_id']} of this round")
        return rnd, None
    candidates = [r for r in round_rows.values()
                  if _assigned(r, guard_id, shift_ids) and cid in seq_of.get(r["route_id"], {})
                  and r["planned_start"] - rules.EARLY_ALLOWANCE <= t <= r["grace_until"]]
    if not candidates:
        return None, ("not_assigned", f"{guard_id} has no round with checkpoint {cp['name']} ({cid}) at "
                                      f"{t.isoformat()}")
    open_first = sorted(candidates, key=lambda r: (r["status"] not in rules.OPEN_STATUSES, r["planned_start"]))
    return open_first[0], None


def _anomalies(timeline, cp, t) -> list[str]:
    flags = []
    cid = cp["checkpoint_id"]
    window = timedelta(seconds=rules.REPEAT_WINDOW_S)
    if any(c == cid and abs(t - when) <= window for when, c, _, _ in timeline):
        flags.append("repeated_tag")
    before = [x for x in timeline if x[0] <= t and x[1] != cid]
    after = [x for x in timeline if x[0] > t and x[1] != cid]
    for other in ([max(before, key=lambda x: x[0])] if before else []) + ([min(after, key=lambda x: x[0])]
                                                                        if after else []):
        distance = rules.haversine_m(other[2], other[3], cp["latitude"], cp["longitude"])
        if rules.too_fast(distance, abs((t - other[0]).total_seconds())):
            flags.append("too_fast")
            break
    return flags


def _evaluate(conn, rnd: dict, seq: dict[str, int], ordered: bool) -> tuple[rules.RoundResult, datetime | None]:
    """The round's result from its counted scans, and the first counted scan's time."""
    visits = [rules.Visit(cp, t, timing == "on_time") for cp, t, timing in conn.execute(
        select(scans.c.checkpoint_id, scans.c.device_time, scans.c.timing)
        .where(scans.c.round_id == rnd["round_id"], scans.c.counted.is_(True)))]
    started = min((v.at for v in visits), default=None)
    return rules.evaluate_round(list(seq.items()), ordered, visits), started


def _result_json(result: rules.RoundResult) -> str:
    return json.dumps({"visited": result.visited, "missing": result.missing, "skipped": result.skipped,
                       "out_of_order": result.out_of_order})


def _advance_round(conn, rnd: dict, seq: dict[str, int], ordered: bool, guard_id: str, now: datetime) -> None:
    if rnd["status"] in rules.MISSED_STATUSES:
        _reconcile_round(conn, rnd, seq, ordered, guard_id, now)
        return
    if rnd["status"] not in rules.OPEN_STATUSES:
        return
    result, started = _evaluate(conn, rnd, seq, ordered)
    status = rules.round_next(rnd["status"], "all_visited" if result.all_visited else "scan")
    values = dict(status=status, result=_result_json(result), started_at=started,
                  walked_by=rnd["walked_by"] or guard_id)
    if status == "complete":
        values.update(on_time=result.on_time, closed_at=now)
    conn.execute(update(rounds).where(rounds.c.round_id == rnd["round_id"]).values(**values))
    rnd.update(values)


def _reconcile_round(conn, rnd: dict, seq: dict[str, int], ordered: bool, guard_id: str, now: datetime) -> None:
    """A round closed as missed or incomplete whose scans, made in time, arrived afterwards: it
    becomes complete or less incomplete, and `patrol.round_reconciled` tells the supervisor who
    was told it was missed."""
    before = json.loads(rnd["result"]) if rnd["result"] else {}
    result, started = _evaluate(conn, rnd, seq, ordered)
    if result.missing == before.get("missing"):
        return
    status = rules.round_next(rnd["status"], "synced_all" if result.all_visited else "synced_some")
    values = dict(status=status, result=json.dumps({**json.loads(_result_json(result)), "reconciled_at": now.isoformat(),
                                                    "status_at_close": before.get("status_at_close", rnd["status"])}),
                  started_at=started, walked_by=rnd["walked_by"] or guard_id,
                  on_time=result.on_time if status == "complete" else False)
    conn.execute(update(rounds).where(rounds.c.round_id == rnd["round_id"]).values(**values))
    name = conn.execute(select(routes.c.name).where(routes.c.route_id == rnd["route_id"])).scalar()
    outbox_queue(conn, outbox, rnd["site_id"], "round_reconciled", round_id=rnd["round_id"],
                 route_id=rnd["route_id"], route_name=name, guard_id=values["walked_by"],
                 assigned_to=rnd["guard_id"] or rnd["shift_id"], previous_status=rnd["status"], status=status,
                 missed_checkpoints=result.missing, supervisor_role=SUPERVISOR_ROLE)
    rnd.update(values)


def _raise_missed(conn, r: dict, kind: str, missing: list[str], cps: list[dict], now: datetime) -> dict | None:
    """Queue `patrol.round_missed` for what was not raised before (one alert per round, kind and
    checkpoint); returns the payload, or None when everything was raised already."""
    keys = [""] if kind == "round" else missing
    if not keys:
        return None
    raised = set(conn.execute(insert_ignore(conn, alerts).returning(alerts.c.checkpoint_id),
                              [dict(round_id=r["round_id"], kind=kind, checkpoint_id=k, raised_at=now)
                               for k in keys]).scalars())
    if not raised:
        return None
    missed = missing if kind == "round" else [c for c in missing if c in raised]
    cp_names = {c["checkpoint_id"]: c["name"] for c in cps}
    route_name = r.get("route_name") or conn.execute(select(routes.c.name)
                                                     .where(routes.c.route_id == r["route_id"])).scalar()
    return outbox_queue(
        conn, outbox, r["site_id"], "round_missed", round_id=r["round_id"], route_id=r["route_id"],
        route_name=route_name, guard_id=r["walked_by"] or r["guard_id"],
        assigned_to=r["guard_id"] or r["shift_id"], shift_id=r["shift_id"],
        planned_start=r["planned_start"].isoformat(), due_by=r["grace_until"].isoformat(),
        missed_checkpoints=missed, missed_checkpoint_names=[cp_names.get(c, c) for c in missed],
        kind=kind, supervisor_role=SUPERVISOR_ROLE)


def close_due_rounds(conn, now: datetime, limit: int = 500) -> list[dict]:
    """Close every open round whose grace has run out: missed (no scan) or incomplete, and raise
    `patrol.round_missed` once per round (kind "round") or per missed checkpoint (kind
    "checkpoint"). Returns the events queued."""
    due = conn.execute(select(rounds).where(rounds.c.status.in_(rules.OPEN_STATUSES), rounds.c.grace_until <= now)
                       .order_by(rounds.c.grace_until).limit(limit).with_for_update(skip_locked=True)
                       ).mappings().all()
    if not due:
        return []
    route_cps = route_checkpoint_rows(conn, {r["route_id"] for r in due})
    names = dict(conn.execute(select(routes.c.route_id, routes.c.name)
                              .where(routes.c.route_id.in_({r["route_id"] for r in due}))).all())
    events = []
    for r in due:
        cps = route_cps.get(r["route_id"], [])
        seq = {c["checkpoint_id"]: c["seq"] for c in cps}
        result, _ = _evaluate(conn, dict(r), seq, bool(cps[0]["ordered"]) if cps else True)
        status = rules.round_next(r["status"], "all_visited" if result.all_visited else "grace_over")
        conn.execute(update(rounds).where(rounds.c.round_id == r["round_id"]).values(
            status=status, result=_result_json(result), closed_at=now,
            on_time=result.on_time if status == "complete" else False))
        if status == "complete":
            continue
        event = _raise_missed(conn, {**r, "route_name": names.get(r["route_id"])},
                              "round" if status == "missed" else "checkpoint", result.missing, cps, now)
        if event:
            events.append(event)
    return events


# -- incidents: hazards to fix (隐患整改) -----------------------------------------------------------------

def report_incident(conn, guard_row: dict, report: dict, received_at: datetime) -> dict:
    """Store an incident from a round once per incident_id; it opens a hazard to fix."""
    iid = report.get("incident_id") or ""
    if not iid or len(iid) > 64:
        raise InvalidInput("incident_id is required (a UUID, at most 64 characters)")
    existing = conn.execute(select(incidents.c.status, incidents.c.reported_by)
                            .where(incidents.c.incident_id == iid)).first()
    if existing:
        if existing.reported_by != guard_row["guard_id"]:
            raise InvalidInput(f"incident {iid} was reported by someone else")
        return {"incident_id": iid, "status": existing.status, "duplicate": True}
    if report.get("type") not in rules.INCIDENT_TYPES:
        raise InvalidInput(f"type must be one of {', '.join(rules.INCIDENT_TYPES)}")
    if report.get("severity") not in rules.SEVERITIES:
        raise InvalidInput(f"severity must be one of {', '.join(rules.SEVERITIES)}")
    text = (report.get("text") or "").strip()
    if not text or len(text) > 4000:
        raise InvalidInput("text is required (at most 4000 characters)")
    photo, photo_type = report.get("photo") or None, None
    if photo:
        try:
            photo_type = rules.photo_kind(photo)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    round_id = report.get("round_id") or None
    if round_id:
        rnd = _require(conn, rounds, rounds.c.round_id, round_id, "round")
        shift_ids = guard_shifts(conn, guard_row["guard_id"])
        if not _assigned(rnd, guard_row["guard_id"], shift_ids) and rnd["walked_by"] != guard_row["guard_id"]:
            raise NotAssigned(f"round {round_id} is not assigned to {guard_row['guard_id']} or their shift")
    conn.execute(insert(incidents).values(
        incident_id=iid, site_id=guard_row["site_id"], round_id=round_id,
        checkpoint_id=report.get("checkpoint_id") or None, type=report["type"], severity=report["severity"],
        text=text, photo=photo, photo_type=photo_type, reported_by=guard_row["guard_id"],
        reported_at=report.get("device_time"), received_at=received_at, status="open", updated_at=received_at))
    conn.execute(insert(incident_steps).values(incident_id=iid, step="reported", status="open",
                                               actor=guard_row["guard_id"], at=received_at, note=text[:200]))
    outbox_queue(conn, outbox, guard_row["site_id"], "incident_reported", incident_id=iid, round_id=round_id,
                 checkpoint_id=report.get("checkpoint_id") or None, type=report["type"],
                 severity=report["severity"], text=text, reported_by=guard_row["guard_id"],
                 has_photo=photo is not None)
    return {"incident_id": iid, "status": "open", "duplicate": False}


def incident(conn, incident_id: str) -> dict:
    row = _require(conn, incidents, incidents.c.incident_id, incident_id, "incident")
    steps = conn.execute(select(incident_steps).where(incident_steps.c.incident_id == incident_id)
                         .order_by(incident_steps.c.id)).mappings()
    return {**_plain(row), "has_photo": row["photo"] is not None,
            "steps": [{k: v for k, v in _plain(s).items() if k not in ("id", "incident_id")} for s in steps]}


def list_incidents(conn, site_id: str, status: str | None = None, limit: int = 200) -> list[dict]:
    q = select(incidents.c.incident_id).where(incidents.c.site_id == site_id)
    if status:
        if status not in rules.HAZARD_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(rules.HAZARD_STATUSES)}")
        q = q.where(incidents.c.status == status)
    ids = conn.execute(q.order_by(incidents.c.received_at.desc()).limit(limit)).scalars().all()
    return [incident(conn, i) for i in ids]


def incident_photo(conn, incident_id: str) -> tuple[bytes, str]:
    row = _require(conn, incidents, incidents.c.incident_id, incident_id, "incident")
    if row["photo"] is None:
        raise NotFound(f"incident {incident_id!r} has no photo")
    return bytes(row["photo"]), row["photo_type"]


def incident_step(conn, incident_id: str, action: str, actor: str, assignee: str | None = None,
                  note: str = "") -> dict:
    """Move a hazard on: assign (to `assignee`), fix, verify, or reject (the fix is not good
    enough: back to its assignee). Who and when is recorded at each step."""
    row = _require(conn, incidents, incidents.c.incident_id, incident_id, "incident")
    try:
        status = rules.hazard_next(row["status"], action, actor, row["fixed_by"])
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if action == "assign" and not assignee:
        raise InvalidInput("assign needs an assignee (who will fix it)")
    now = _now()
    values = dict(status=status, updated_at=now)
    if action == "assign":
        values["assigned_to"] = assignee
    elif action == "fix":
        values["fixed_by"] = actor
    elif action == "verify":
        values["verified_by"] = actor
    else:       # reject: the fix goes back to its assignee
        values["fixed_by"] = None
    conn.execute(update(incidents).where(incidents.c.incident_id == incident_id,
                                         incidents.c.status == row["status"]).values(**values))
    conn.execute(insert(incident_steps).values(incident_id=incident_id, step=action, status=status, actor=actor,
                                               at=now, note=(note or (assignee or ""))[:2000]))
    return incident(conn, incident_id)


# -- reports ---------------------------------------------------------------------------------------------

def report(conn, site_id: str, since, until, by: str = "guard") -> dict:
    """Completion and on-time rates and missed checkpoints per guard or per route, for rounds
    planned in [since, until) and closed (expired rounds are not counted)."""
    if by not in ("guard", "route"):
        raise InvalidInput("by must be guard or route")
    start, end = _time(since, "since"), _time(until, "until")
    if end <= start:
        raise InvalidInput("until must be after since")
    rows = conn.execute(select(rounds.c.route_id, rounds.c.guard_id, rounds.c.shift_id, rounds.c.walked_by,
                               rounds.c.status, rounds.c.on_time, rounds.c.result)
                        .where(rounds.c.site_id == site_id, rounds.c.planned_start >= start,
                               rounds.c.planned_start < end)).all()
    totals = {r: len(c) for r, c in route_checkpoint_rows(conn, {r.route_id for r in rows}).items()} if rows else {}
    names = {}
    if by == "route" and rows:
        names = dict(conn.execute(select(routes.c.route_id, routes.c.name)
                                  .where(routes.c.route_id.in_({r.route_id for r in rows}))).all())
    elif rows:
        names = dict(conn.execute(select(guards.c.guard_id, guards.c.name).where(guards.c.site_id == site_id)).all())
    tallies: dict[str, rules.Tally] = {}
    for r in rows:
        key = r.route_id if by == "route" else (r.walked_by or r.guard_id or f"shift:{r.shift_id}")
        result = json.loads(r.result) if r.result else {}
        missing = result.get("missing", [])
        tallies.setdefault(key, rules.Tally()).add(r.status, r.on_time, totals.get(r.route_id, 0), missing)
    out = [{by: key, "name": names.get(key, key), **t.figures()} for key, t in sorted(tallies.items())]
    return {"site_id": site_id, "since": start.isoformat(), "until": end.isoformat(), "by": by, "rows": out}
