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
LOT = "demo-garage"
TARIFF = {"free_minutes": 0,        # so that a visitor leaving at once in the demo pays; estates often use 15 "first_period_minutes": 60, "first_period_fen": 500, "increment_minutes": 30,
          "increment_fen": 200, "night_start": "22:00", "night_end": "07:00", "night_increment_fen": 100,
          "daily_cap_fen": 3000}
CARS = [("皖A12345", "resident", "1-1-101"), ("皖A66666", "resident", "1-1-102")]


def _once(call, *args):
    try:
        return call(*args)
    except Exception as exc:   # already seeded: keep going
        if "already exists" not in str(exc) and "taken" not in str(exc):
            raise


def seed_parking(rpc, now):
    parking = rpc.parking
    parking.set_lot(SITE, LOT, "Demo garage", "Asia/Shanghai", 20, TARIFF)
    parking.add_lane(LOT, "in1", "Garage entry", "entry")
    parking.add_lane(LOT, "out1", "Garage exit", "exit")
    for plate, kind, holder in CARS:
        parking.register_vehicle(LOT, plate, kind, holder)
    parking.register_vehicle(LOT, "沪C99999", "visitor", "p-liwei", now.date().isoformat(),
                             (now + timedelta(days=1)).date().isoformat(), 0, 120)
    yield ("  garage demo-garage: residents 皖A12345, 皖A66666; visitor 沪C99999 (2 h free, host Li Wei); "
           "5.00 CNY first hour, 2.00 per 30 min (1.00 at night), 30.00 a day")


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
    yield from seed_parking(rpc, now)
    from gatehouse import demo_billing, demo_notify, demo_patrol
    for area in (demo_notify, demo_billing, demo_patrol):   # recipients first: they hear the rest
        yield from area.seed(rpc, now)
    yield f"  visitor pass for Sun Li (host 1-1-101, north-gate, 4 passages, 8 h): {visit['code']}"
