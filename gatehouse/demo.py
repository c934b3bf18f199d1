"""The small demo estate `make run` seeds: one site, two turnstiles, a few people and cards."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

SITE = "demo"
GATES = [("north-gate", "North pedestrian gate"), ("garage-door", "Garage pedestrian door")]
PEOPLE = [  # person_id, name, kind, group, card, validity
    ("p-liwei", "Li Wei", "resident", "residents", "10001", None),
    ("p-zhangmin", "Zhang Min", "resident", "residents", "10002", None),
    ("p-wangfang", "Wang Fang", "staff", "staff", "20001", None),
    ("p-chenjie", "Chen Jie", "contractor", "contractors", "30001", "expired"),
]
GROUPS = [("residents", "Residents", ["north-gate"]),
          ("staff", "Staff", ["north-gate", "garage-door"]),
          ("contractors", "Contractors", ["garage-door"])]


def seed(rpc):
    access = rpc.access
    access.create_site(SITE, "Gatehouse Demo Estate", "Asia/Shanghai")
    for gate_id, name in GATES:
        access.add_gate(SITE, gate_id, name)
    for group_id, name, gates in GROUPS:
        access.create_group(SITE, group_id, name, gates)
    now = datetime.now(UTC)
    for person_id, name, kind, group, card, validity in PEOPLE:
        try:
            access.add_person(SITE, person_id, name, kind)
        except Exception as exc:   # already seeded: keep going
            if "already exists" not in str(exc):
                raise
        access.add_to_group(group, person_id)
        if validity == "expired":
            access.issue_card(person_id, card, (now - timedelta(days=30)).isoformat(),
                              (now - timedelta(days=1)).isoformat())
        else:
            access.issue_card(person_id, card, None, None)
        yield f"  {name:<10} {kind:<10} card {card}  group {group}" + ("  (expired)" if validity else "")
