"""Patrol rules as plain code: distances and anomalies, trusted times, what a round's scans add up
to, the round and hazard state machines, schedules (properties with hypothesis)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse import signing
from services.patrol import rules

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
lat = st.floats(min_value=-80, max_value=80, allow_nan=False)
lon = st.floats(min_value=-179, max_value=179, allow_nan=False)


# -- geometry and anomalies -------------------------------------------------------------------------

def test_haversine_knows_a_degree_of_latitude_and_a_city_block():
    assert rules.haversine_m(31.0, 117.0, 32.0, 117.0) == pytest.approx(111_195, rel=1e-3)
    assert rules.haversine_m(31.8200, 117.2200, 31.8206, 117.2200) == pytest.approx(66.7, abs=0.5)


@given(lat, lon, lat, lon)
def test_haversine_is_symmetric_and_never_negative(a, b, c, d):
    one, other = rules.haversine_m(a, b, c, d), rules.haversine_m(c, d, a, b)
    assert one >= 0 and one == pytest.approx(other, abs=1e-6)
    assert rules.haversine_m(a, b, a, b) == 0


@given(st.floats(0, 500), st.floats(1, 200), st.floats(0, 200), st.floats(0, 200))
def test_a_fix_is_outside_only_when_even_its_accuracy_circle_misses_the_radius(offset_m, radius, acc1, acc2):
    lat2 = 31.82 + offset_m / 111_195
    distance = rules.haversine_m(31.82, 117.22, lat2, 117.22)
    flagged = rules.outside_radius(31.82, 117.22, radius, lat2, 117.22, acc1)
    assert flagged == (distance - acc1 > radius)
    if flagged and acc2 < acc1:       # a better fix at the same place is outside too
        assert rules.outside_radius(31.82, 117.22, radius, lat2, 117.22, acc2)


@given(st.floats(0, 5000), st.floats(0, 3600))
def test_too_fast_is_exactly_faster_than_the_walking_limit(distance, seconds):
    assert rules.too_fast(distance, seconds) == (distance > 2.0 and distance > rules.MAX_WALK_SPEED_M_S * seconds)


def test_device_times_in_the_future_or_long_ago_are_not_trusted():
    assert rules.time_flags(T0 + timedelta(minutes=4), T0) == []
    assert rules.time_flags(T0 + timedelta(minutes=6), T0) == ["future_time"]
    assert rules.time_flags(T0 - timedelta(days=6), T0) == []
    assert rules.time_flags(T0 - timedelta(days=8), T0) == ["ancient_time"]
    assert rules.time_flags(T0 - timedelta(hours=3), T0, round_created_at=T0 - timedelta(hours=1)) == ["before_round"]


def test_timing_of_a_scan_within_its_round():
    start, due, grace = T0, T0 + timedelta(minutes=30), T0 + timedelta(minutes=40)
    assert rules.timing(start - timedelta(minutes=16), start, due, grace) == "early"
    assert rules.timing(start - timedelta(minutes=14), start, due, grace) == "on_time"
    assert rules.timing(due, start, due, grace) == "on_time"
    assert rules.timing(due + timedelta(seconds=1), start, due, grace) == "late"
    assert rules.timing(grace + timedelta(seconds=1), start, due, grace) == "after_grace"
    assert rules.clock_skew_s(T0 + timedelta(seconds=90), T0) == 90.0 and rules.clock_skew_s(None, T0) is None


def test_nfc_uids_and_photos_are_checked():
    assert rules.normalize_nfc_uid("04:a1:b2:c3") == "04A1B2C3"
    assert rules.normalize_nfc_uid("04 A1 B2 C3 D4 E5 F6") == "04A1B2C3D4E5F6"
    for bad in ("04A1B2", "zz:zz:zz:zz", "04A1B2C3D4"):
        with pytest.raises(ValueError):
            rules.normalize_nfc_uid(bad)
    assert rules.photo_kind(b"\xff\xd8\xff\xe1rest") == "jpeg"
    assert rules.photo_kind(b"\x89PNG\r\n\x1a\nrest") == "png"
    with pytest.raises(ValueError, match="JPEG or PNG"):
        rules.photo_kind(b"GIF89a")
    with pytest.raises(ValueError, match="at most"):
        rules.photo_kind(b"\xff\xd8\xff" + b"\x00" * rules.MAX_PHOTO_BYTES)


# -- rounds -----------------------------------------------------------------------------------------------

ROUTE = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]


def visits(*ids, on_time=True):
    return [rules.Visit(c, T0 + timedelta(minutes=i), on_time) for i, c in enumerate(ids)]


def test_an_ordered_round_lists_skipped_and_out_of_order_checkpoints():
    r = rules.evaluate_round(ROUTE, True, visits("a", "c", "b"))
    assert r.visited == ["a", "b", "c"] and r.missing == ["d"] and r.skipped == [] and r.out_of_order == ["b"]
    r = rules.evaluate_round(ROUTE, True, visits("a", "d"))
    assert r.missing == ["b", "c"] and r.skipped == ["b", "c"] and not r.all_visited and not r.on_time
    r = rules.evaluate_round(ROUTE, False, visits("d", "c", "b", "a", "a"))
    assert r.all_visited and r.on_time and r.out_of_order == [] and r.skipped == []
    late = visits("a", "b", "c") + [rules.Visit("d", T0 + timedelta(hours=1), False)]
    assert rules.evaluate_round(ROUTE, True, late).on_time is False


@given(st.lists(st.sampled_from("abcdxy"), max_size=12), st.booleans())
def test_a_round_result_accounts_for_every_checkpoint_once(seen, ordered):
    r = rules.evaluate_round(ROUTE, ordered, visits(*seen))
    assert sorted(r.visited + r.missing) == ["a", "b", "c", "d"]
    assert set(r.skipped) <= set(r.missing) and set(r.out_of_order) <= set(r.visited)
    assert r.all_visited == (set("abcd") <= set(seen))
    if not ordered:
        assert r.skipped == [] and r.out_of_order == []
    if seen == sorted(seen) and ordered:
        assert r.out_of_order == []


def test_rounds_move_forward_only():
    assert rules.round_next("pending", "scan") == "in_progress"
    assert rules.round_next("in_progress", "all_visited") == "complete"
    assert rules.round_next("pending", "grace_over") == "missed"
    assert rules.round_next("in_progress", "grace_over") == "incomplete"
    assert rules.round_next("pending", "withdraw") == "expired"
    for closed in ("complete", "incomplete", "missed", "expired"):
        for event in ("scan", "all_visited", "grace_over", "withdraw"):
            with pytest.raises(ValueError, match="cannot take"):
                rules.round_next(closed, event)
    with pytest.raises(ValueError):
        rules.round_next("in_progress", "withdraw")     # a round being walked is not withdrawn


# -- schedules --------------------------------------------------------------------------------------------

def test_interval_rounds_in_a_shift_window_across_midnight():
    night = rules.Schedule("interval", 30, 10, every_minutes=120, window_start="22:00", window_end="06:00")
    starts = rules.planned_starts(night, "normal", "Asia/Shanghai", T0, T0 + timedelta(days=1))
    local = [s.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M") for s in starts]
    assert local == ["22:00", "00:00", "02:00", "04:00"]
    high = rules.planned_starts(night, "high", "Asia/Shanghai", T0, T0 + timedelta(days=1))
    assert len(high) == 8


def test_fixed_and_random_rounds():
    fixed = rules.Schedule("fixed", 20, 5, times=("09:00", "21:30"), days=("mon", "tue", "wed", "thu", "fri"))
    starts = rules.planned_starts(fixed, "normal", "Asia/Shanghai", T0, T0 + timedelta(days=3))   # Fri 10:00 to Mon 10:00
    assert [s.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%a %H:%M") for s in starts] == ["Fri 21:30", "Mon 09:00"]
    rnd = rules.Schedule("random", 30, 10, rounds_per_window=3, window_start="20:00", window_end="08:00", salt="x")
    again = rules.planned_starts(rnd, "normal", "Asia/Shanghai", T0, T0 + timedelta(days=2))
    assert again == rules.planned_starts(rnd, "normal", "Asia/Shanghai", T0, T0 + timedelta(days=2))
    other = rules.Schedule("random", 30, 10, rounds_per_window=3, window_start="20:00", window_end="08:00", salt="y")
    assert again != rules.planned_starts(other, "normal", "Asia/Shanghai", T0, T0 + timedelta(days=2))


@pytest.mark.parametrize("fields, message", [
    ({"kind": "weekly"}, "kind"), ({"every_minutes": 5}, "every_minutes"), ({"window_start": "25:00"}, "HH:MM"),
    ({"days": ("mon", "funday")}, "days"), ({"expected_minutes": 0}, "expected_minutes")])
def test_schedules_say_what_is_wrong(fields, message):
    with pytest.raises(ValueError, match=message):
        rules.Schedule(**{"kind": "interval", "expected_minutes": 30, "grace_minutes": 10, "every_minutes": 60,
                          **fields})


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(rules.SCHEDULE_KINDS), every=st.integers(10, 600), per=st.integers(1, 6),
       start_h=st.integers(0, 23), span_h=st.integers(1, 24), offset_h=st.integers(0, 200),
       risk=st.sampled_from(list(rules.RISK_FACTORS)), salt=st.text(max_size=8))
def test_planned_starts_are_inside_the_range_and_window_and_stable(kind, every, per, start_h, span_h, offset_h,
                                                                   risk, salt):
    end_h = (start_h + span_h) % 24
    schedule = rules.Schedule(kind, 20, 5, every_minutes=every, rounds_per_window=per, times=(f"{start_h:02d}:15",),
                              window_start=f"{start_h:02d}:00", window_end=f"{end_h:02d}:00", salt=salt)
    begin = T0 + timedelta(hours=offset_h)
    end = begin + timedelta(hours=30)
    starts = rules.planned_starts(schedule, risk, "Asia/Shanghai", begin, end)
    assert starts == sorted(set(starts)) and all(begin <= s < end for s in starts)
    assert starts == rules.planned_starts(schedule, risk, "Asia/Shanghai", begin, end)
    zone = ZoneInfo("Asia/Shanghai")
    for s in starts:
        local = s.astimezone(zone)
        minutes_in = (local.hour * 60 + local.minute - start_h * 60) % (24 * 60)
        assert minutes_in < schedule.window_minutes() or kind == "fixed"
    if kind == "interval":   # a riskier area is walked at least as often
        normal = rules.planned_starts(schedule, "normal", "Asia/Shanghai", begin, end)
        critical = rules.planned_starts(schedule, "critical", "Asia/Shanghai", begin, end)
        assert len(critical) >= len(normal)


# -- hazards ---------------------------------------------------------------------------------------------

def test_a_hazard_is_assigned_fixed_and_verified_by_someone_else():
    assert rules.hazard_next("open", "assign", "chen") == "assigned"
    assert rules.hazard_next("assigned", "fix", "li") == "fixed"
    with pytest.raises(ValueError, match="may not verify"):
        rules.hazard_next("fixed", "verify", "li", fixed_by="li")
    assert rules.hazard_next("fixed", "reject", "chen", fixed_by="li") == "assigned"
    assert rules.hazard_next("fixed", "verify", "chen", fixed_by="li") == "verified"
    with pytest.raises(ValueError, match="cannot take"):
        rules.hazard_next("open", "verify", "chen")
    with pytest.raises(ValueError, match="cannot take"):
        rules.hazard_next("verified", "assign", "chen")
    with pytest.raises(ValueError, match="required"):
        rules.hazard_next("open", "assign", "")


def test_tally_rates_count_closed_rounds_only():
    t = rules.Tally()
    t.add("complete", True, 4, [])
    t.add("complete", False, 4, [])
    t.add("missed", False, 4, ["a", "b", "c", "d"])
    t.add("expired", False, 4, [])
    f = t.figures()
    assert f["rounds"] == 3 and f["completion_rate"] == round(2 / 3, 4) and f["on_time_rate"] == round(1 / 3, 4)
    assert f["checkpoints_missed"] == 4 and rules.Tally().figures()["completion_rate"] is None


# -- checkpoint codes ------------------------------------------------------------------------------------

def test_checkpoint_codes_are_signed_and_cannot_pass_as_another_prefix():
    kid, private, public = signing.new_signing_key()
    code = signing.sign("GP1", {"site": "s1", "cp": "cp-1", "v": 1}, kid, private)
    assert signing.verify("GP1", code, {kid: public}, "s1") == {"site": "s1", "cp": "cp-1", "v": 1}
    with pytest.raises(signing.InvalidCode) as wrong_kind:
        signing.verify("GH1", "GH1" + code[3:], {kid: public})
    assert wrong_kind.value.reason == "bad_signature"
    with pytest.raises(signing.InvalidCode) as other_site:
        signing.verify("GP1", code, {kid: public}, "s2")
    assert other_site.value.reason == "wrong_site"


def test_a_missed_round_is_corrected_when_scans_made_in_time_arrive_late():
    assert rules.round_next("missed", "synced_some") == "incomplete"
    assert rules.round_next("missed", "synced_all") == "complete"
    assert rules.round_next("incomplete", "synced_all") == "complete"
    for closed in ("complete", "expired", "pending", "in_progress"):
        with pytest.raises(ValueError):
            rules.round_next(closed, "synced_all")


def test_a_rejected_scan_reopens_a_complete_round_within_its_grace_only():
    assert rules.round_next("complete", "rejected_in_grace") == "in_progress"
    assert rules.round_next("complete", "rejected_after_grace") == "incomplete"
    for other in ("pending", "in_progress", "missed", "incomplete", "expired"):
        with pytest.raises(ValueError):
            rules.round_next(other, "rejected_after_grace")
