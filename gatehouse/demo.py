"""The small demo estate `make run` seeds: one site, two turnstiles in one zone, units and
residents, staff, a contractor on a cleaning schedule, a PIN, and a visitor pass.
Seeding twice changes nothing that is already there."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

SITE = "demo"
ZONE = ("estate", "The estate", "soft")          # entering twice without leaving: admitted, with an alarm
GATES = [("north-gate", "North pedestrian gate", "in"), ("garage-door", "Garage pedestrian door", "out")]
UNITS = [("1-1-101", "1", "1", "101", "89.50"), ("1-1-102", "1", "1", "102", "120.00"),
         ("2-1-301", "2", "1", "301", "76.25")]
PROFILES = [("cleaning", "Cleaning hours", [{"day": d, "start": "06:00", "end": "09:00"} for d in
                                            ("mon", "tue", "wed", "thu", "fri", "sat")]
             + [{"day": d, "start": "14:00", "end": "17:00"} for d in ("mon", "tue", "wed", "thu", "fri")])]
GROUPS = [("residents", "Residents", ["north-gate", "garage-door"], None),
          ("staff", "Staff", ["north-gate", "garage-door"], None),
          ("cleaners", "Cleaners", ["north-gate", "garage-door"], "cleaning"),
          ("contractors", "Contractors", ["garage-door"], None)]
PEOPLE = [  # person_id, name, kind, unit, group, card, validity
    ("p-liwei", "Li Wei", "resident", "1-1-101", "residents", "10001", None),
    ("p-zhangmin", "Zhang Min", "resident", "1-1-102", "residents", "10002", None),
    ("p-wangfang", "Wang Fang", "staff", None, "staff", "20001", None),
    ("p-zhaolei", "Zhao Lei", "staff", None, "cleaners", "20002", None),
    ("p-chenjie", "Chen Jie", "contractor", None, "contractors", "30001", "expired"),
]
PIN = ("p-wangfang", "246810")


def _once(call, *args):
    try:
        return call(*args)
    except Exception as exc:   # already seeded: keep going
        if "already exists" not in str(exc) and "taken" not in str(exc):
            raise


def seed(rpc):
    access = rpc.access
    access.create_site(SITE, "Gatehouse Demo Estate", "Asia/Shanghai")
    access.set_zone(SITE, ZONE[0], ZONE[1], ZONE[2])
    for gate_id, name, direction in GATES:
        access.add_gate(SITE, gate_id, name, ZONE[0], direction)
    for unit in UNITS:
        _once(access.add_unit, SITE, *unit)
    for profile_id, name, periods in PROFILES:
        access.set_time_profile(SITE, profile_id, name, periods)
    for group_id, name, gates, profile in GROUPS:
        access.create_group(SITE, group_id, name, gates, profile)
    now = datetime.now(UTC)
    for person_id, name, kind, unit, group, card, validity in PEOPLE:
        _once(access.add_person, SITE, person_id, name, kind, unit)
        access.add_to_group(group, person_id)
        if validity == "expired":
            access.issue_card(person_id, card, (now - timedelta(days=30)).isoformat(),
                              (now - timedelta(days=1)).isoformat())
        else:
            access.issue_card(person_id, card, None, None)
        yield f"  {name:<10} {kind:<10} {unit or '':<8} card {card}  group {group}" + (
            "  (expired)" if validity else "")
    _once(access.issue_card, PIN[0], PIN[1], None, None, "pin")
    yield f"  PIN {PIN[1]} for {PIN[0]};  cleaners' schedule: Mon-Sat 06:00-09:00, Mon-Fri 14:00-17:00"
    visit = access.register_visitor(SITE, "Sun Li", "family visit", "p-liwei", "1-1-101",
                                    (now - timedelta(minutes=1)).isoformat(), (now + timedelta(hours=8)).isoformat(),
                                    None, "p-liwei", None, False, ["north-gate"], 4)
    yield f"  visitor pass for Sun Li (host 1-1-101, north-gate, 4 passages, 8 h): {visit['code']}"
