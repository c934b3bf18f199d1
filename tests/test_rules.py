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


# -- schedules, holidays, time zones --------------------------------------------------------

from datetime import datetime as _dt  # noqa: E402
from zoneinfo import ZoneInfo as _Zone  # noqa: E402

import pytest  # noqa: E402

from services.access.rules import (  # noqa: E402
    AccessGroup,
    Passback,
    SitePolicy,
    TimeProfile,
    Zone,
    format_periods,
    last_reset,
    parse_periods,
)

SHANGHAI = _Zone("Asia/Shanghai")


def at(text: str) -> float:
    """A local Shanghai time as unix seconds."""
    return _dt.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp()


def policy(**kw) -> SitePolicy:
    weekdays = TimeProfile("office", parse_periods(
        [{"day": d, "start": "08:00", "end": "12:00"} for d in ("mon", "tue", "wed", "thu", "fri")]
        + [{"day": d, "start": "13:00", "end": "18:00"} for d in ("mon", "tue", "wed", "thu", "fri")]))
    return SitePolicy(timezone="Asia/Shanghai", holidays=frozenset({"2026-10-01"}),
                      groups={"cleaners": AccessGroup("cleaners", frozenset({"north"}), "office"),
                              "residents": AccessGroup("residents", frozenset({"north", "garage"}))},
                      profiles={"office": weekdays}, **kw)


CLEANER = Credential("c1", "cl", "Cleaner", "active", group_ids=frozenset({"cleaners"}), person_kind="staff")


def test_schedule_opens_only_inside_its_periods_in_the_site_time_zone():
    p = policy()
    assert decide(CLEANER, "north", at("2026-11-27T08:00"), p).granted        # Friday 08:00 local
    assert decide(CLEANER, "north", at("2026-11-27T11:59"), p).granted
    assert decide(CLEANER, "north", at("2026-11-27T12:30"), p).reason == "outside_schedule"   # lunch gap
    assert decide(CLEANER, "north", at("2026-11-27T18:00"), p).reason == "outside_schedule"   # end exclusive
    assert decide(CLEANER, "north", at("2026-11-28T09:00"), p).reason == "outside_schedule"   # Saturday
    # 09:00 in Shanghai is 01:00 UTC: a rule read in UTC would refuse it
    assert _dt.fromtimestamp(at("2026-11-27T09:00"), _Zone("UTC")).hour == 1


def test_holiday_closes_weekday_periods_unless_the_profile_has_holiday_periods():
    p = policy()
    assert decide(CLEANER, "north", at("2026-10-01T09:00"), p).reason == "outside_schedule"   # a Thursday
    p.profiles["office"] = TimeProfile("office", parse_periods([{"day": "holiday", "start": "10:00", "end": "11:00"}]))
    assert decide(CLEANER, "north", at("2026-10-01T10:30"), p).granted


def test_any_group_without_a_schedule_opens_at_any_time():
    both = Credential("c2", "x", "X", "active", group_ids=frozenset({"cleaners", "residents"}))
    assert decide(both, "north", at("2026-11-28T03:00"), policy()).granted


def test_untrusted_clock_refuses_scheduled_access_but_not_unscheduled():
    p = policy()
    assert decide(CLEANER, "north", at("2026-11-27T09:00"), p, clock_trusted=False).reason == "clock_untrusted"
    resident = Credential("r", "r", "R", "active", group_ids=frozenset({"residents"}))
    assert decide(resident, "north", at("2026-11-27T03:00"), p, clock_trusted=False).granted


def test_unknown_group_or_profile_grants_nothing():
    ghost = Credential("g", "g", "G", "active", group_ids=frozenset({"nope"}))
    assert decide(ghost, "north", at("2026-11-27T09:00"), policy()).reason == "no_access_to_gate"
    p = policy()
    p.groups["cleaners"] = AccessGroup("cleaners", frozenset({"north"}), "deleted-profile")
    assert decide(CLEANER, "north", at("2026-11-27T09:00"), p).reason == "outside_schedule"


def test_periods_are_validated_with_the_field_named():
    for bad, message in (([{"day": "funday", "start": "08:00", "end": "09:00"}], "periods[0].day"),
                         ([{"day": "mon", "start": "8", "end": "09:00"}], "periods[0].start"),
                         ([{"day": "mon", "start": "10:00", "end": "09:00"}], "end must be after start"),
                         ([{"day": "mon", "start": "10:00", "end": "24:30"}], "periods[0].end"),
                         ("weekdays", "must be a list")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_periods(bad)
    periods = parse_periods([{"day": "Holiday", "start": "00:00", "end": "24:00"}])
    assert format_periods(periods) == [{"day": "holiday", "start": "00:00", "end": "24:00"}]


# -- visitor passes ------------------------------------------------------------------------------

def test_limited_pass_counts_the_larger_of_the_centre_and_local_uses():
    visitor = Credential("visitor:v1", "v1", "Guest", "active", gate_ids=frozenset({"north"}),
                         person_kind="visitor", max_uses=2, uses=1)
    assert decide(visitor, "north", NOW).granted
    assert decide(visitor, "north", NOW, local_uses=2).reason == "used_up"
    assert decide(visitor, "garage", NOW).reason == "no_access_to_gate"


# -- anti-passback ------------------------------------------------------------------------------

def apb(mode: str, minutes: int = 0) -> SitePolicy:
    zone = Zone("tower", mode, minutes, reset_minute=3 * 60,
                entry_gate_ids=frozenset({"north"}), exit_gate_ids=frozenset({"north-out"}))
    p = policy(zones={"tower": zone})
    p.groups["residents"] = AccessGroup("residents", frozenset({"north", "north-out", "garage"}))
    return p


RESIDENT = Credential("r1", "ann", "Ann", "active", group_ids=frozenset({"residents"}))


def test_hard_anti_passback_refuses_a_second_entry_and_allows_entry_after_exit():
    p, now = apb("hard"), at("2026-11-27T10:00")
    first = decide(RESIDENT, "north", now, p)
    assert first.granted and (first.zone_id, first.direction) == ("tower", "in")
    inside = Passback("in", now - 60)
    assert decide(RESIDENT, "north", now, p, inside).reason == "antipassback"
    assert decide(RESIDENT, "north-out", now, p, inside).granted
    assert decide(RESIDENT, "north", now, p, Passback("out", now - 30)).granted
    assert decide(RESIDENT, "north-out", now, p, Passback("out", now - 30)).reason == "antipassback"


def test_soft_anti_passback_admits_and_raises_an_alarm():
    p, now = apb("soft"), at("2026-11-27T10:00")
    d = decide(RESIDENT, "north", now, p, Passback("in", now - 60))
    assert d.granted and d.alarm == "antipassback_violation"


def test_timed_anti_passback_allows_re_entry_after_n_minutes():
    p, now = apb("timed", 5), at("2026-11-27T10:00")
    assert decide(RESIDENT, "north", now, p, Passback("in", now - 299)).reason == "antipassback"
    assert decide(RESIDENT, "north", now, p, Passback("in", now - 300)).granted


def test_daily_reset_forgets_yesterdays_state():
    p = apb("hard")
    # reset at 03:00 local: an entry at 02:00 is forgotten at 03:00, not at midnight
    assert decide(RESIDENT, "north", at("2026-11-27T02:59"), p, Passback("in", at("2026-11-26T22:00"))).reason \
        == "antipassback"
    assert decide(RESIDENT, "north", at("2026-11-27T03:00"), p, Passback("in", at("2026-11-27T02:00"))).granted
    assert last_reset(p, p.zones["tower"], at("2026-11-27T02:00")) == at("2026-11-26T03:00")


def test_gate_outside_any_zone_has_no_anti_passback():
    d = decide(RESIDENT, "garage", NOW, apb("hard"), Passback("in", NOW))
    assert d.granted and d.zone_id == ""
