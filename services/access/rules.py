"""May this card pass this gate now? Plain rules, shared by the centre and the edge agent.

Nothing here knows about AMQP, gRPC or SQL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ACTIVE, SUSPENDED, REVOKED = "active", "suspended", "revoked"
CARD_STATUSES = (ACTIVE, REVOKED)
PERSON_STATUSES = (ACTIVE, SUSPENDED)
PERSON_KINDS = ("resident", "staff", "contractor")


@dataclass(frozen=True)
class Credential:
    """What the edge needs to know about one card to decide alone."""

    card_number: str
    person_id: str
    person_name: str
    status: str                      # active, suspended (the person), revoked (the card)
    valid_from: int = 0              # unix seconds, 0 = no start
    valid_until: int = 0             # unix seconds, 0 = no end
    gate_ids: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str


def credential_status(card_status: str, person_status: str) -> str:
    """The status a gate sees: a revoked card stays revoked; a suspended person's cards stop."""
    if card_status != ACTIVE:
        return REVOKED
    return SUSPENDED if person_status != ACTIVE else ACTIVE


def decide(credential: Credential | None, gate_id: str, now: float) -> Decision:
    if credential is None:
        return Decision(False, "unknown_card")
    if credential.status != ACTIVE:
        return Decision(False, f"card_{credential.status}")
    if credential.valid_from and now < credential.valid_from:
        return Decision(False, "not_yet_valid")
    if credential.valid_until and now >= credential.valid_until:
        return Decision(False, "expired")
    if gate_id not in credential.gate_ids:
        return Decision(False, "no_access_to_gate")
    return Decision(True, "granted")
