"""The access decision as plain code."""
from services.access.rules import Credential, credential_status, decide

NOW = 1_800_000_000
CARD = Credential("1001", "ann", "Ann", "active", 0, 0, frozenset({"north"}))


def test_unknown_card_is_denied():
    assert decide(None, "north", NOW).reason == "unknown_card"


def test_active_card_at_its_gate_is_granted():
    d = decide(CARD, "north", NOW)
    assert d.granted and d.reason == "granted"


def test_gate_outside_the_groups_is_denied():
    d = decide(CARD, "garage", NOW)
    assert not d.granted and d.reason == "no_access_to_gate"


def test_validity_window_is_half_open():
    windowed = Credential("1", "p", "P", "active", NOW - 10, NOW + 10, frozenset({"north"}))
    assert decide(windowed, "north", NOW - 10).granted
    assert decide(windowed, "north", NOW - 11).reason == "not_yet_valid"
    assert decide(windowed, "north", NOW + 9).granted
    assert decide(windowed, "north", NOW + 10).reason == "expired"


def test_revoked_and_suspended_are_denied():
    for status in ("revoked", "suspended"):
        c = Credential("1", "p", "P", status, 0, 0, frozenset({"north"}))
        assert decide(c, "north", NOW).reason == f"card_{status}"


def test_credential_status_combines_card_and_person():
    assert credential_status("active", "active") == "active"
    assert credential_status("active", "suspended") == "suspended"
    assert credential_status("revoked", "active") == "revoked"
    assert credential_status("revoked", "suspended") == "revoked"
