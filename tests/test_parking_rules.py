"""The parking rules as plain code: plates, who enters, what a stay costs, who leaves."""
from __future__ import annotations

import time as clock
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.parking.rules import (
    EntryDecision,
    ExitDecision,
    LanePolicy,
    Tariff,
    VehicleRight,
    entry_decision,
    exit_decision,
    exit_fee,
    find_right,
    flag_long_stay,
    normalize_plate,
    plate_kind,
    plates_match,
    price,
)

SH = "Asia/Shanghai"
SHZ = ZoneInfo(SH)
TODAY = date(2026, 5, 10)
LANE = LanePolicy()


def at(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 5) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=SHZ)


def fen(tariff: Tariff, start: datetime, **stay) -> int:
    return price(tariff, start, start + timedelta(**stay), SH).fen


# -- plates -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, plate", [
    ("皖A·12345", "皖A12345"),
    ("皖a12345", "皖A12345"),
    (" 粤 b-d1234.5 ", "粤BD12345"),
    ("京ＡＢ１２３４", "京AB1234"),            # full-width letters and digits
    ("沪ａ　１２３•４５", "沪A12345"),          # full-width lower case, ideographic space, bullet
    ("京Ａ－１２３４５", "京A12345"),           # full-width hyphen
    ("wj0112345", "WJ0112345"),             # plain alphanumeric (armed police, military...)
    ("粤Z1234港", "粤Z1234港"),              # cross-border: a special suffix last
    ("使014578", "使014578"),                # embassy
])
def test_plates_are_normalized(text, plate):
    assert normalize_plate(text) == plate
    assert normalize_plate(plate) == plate       # idempotent


@pytest.mark.parametrize("text", ["", "A", "京", " · ", "A京12345", "京A123京45", "中A12345", "京A12!45",
                                  "京A1234567890", "京a1234é", "学A12345", "京学", None, 12345])
def test_implausible_plates_are_refused(text):
    with pytest.raises(ValueError):
        normalize_plate(text)


@pytest.mark.parametrize("plate, kind", [
    ("皖A12345", "standard"), ("粤B8888X", "standard"),
    ("粤BD12345", "new_energy"), ("粤BFA1234", "new_energy"), ("粤B12345D", "new_energy"), ("粤B12345F", "new_energy"),
    ("粤BA1234X", "other"), ("京A1234警", "other"), ("WJ0112345", "other"), ("使014578", "other"), ("AB", "other"),
])
def test_plate_kinds(plate, kind):
    assert plate_kind(plate) == kind


def test_plates_match_exactly_or_but_for_the_province():
    assert plates_match("皖A12345", "皖a·12345", False)
    assert not plates_match("苏A12345", "皖A12345", False)
    assert plates_match("苏A12345", "皖A12345", True)
    assert not plates_match("苏A12345", "皖A12346", True)
    assert not plates_match("A12345", "B12345", True)            # no province character to tolerate
    assert not plates_match("使014578", "京014578", True)
    assert not plates_match("not a plate!", "皖A12345", True)


def right(plate: str, kind: str, **fields) -> VehicleRight:
    return VehicleRight(plate=plate, kind=kind, **fields)


def test_find_right_exact_then_one_fuzzy_candidate():
    rights = {"皖A12345": right("皖A12345", "resident"), "苏A12345": right("苏A12345", "monthly"),
              "粤B77777": right("粤B77777", "staff")}
    assert find_right("皖A·12345", rights, True) == (rights["皖A12345"], False)     # exact wins
    assert find_right("湘B77777", rights, True) == (rights["粤B77777"], True)
    assert find_right("湘B77777", rights, False) == (None, False)
    assert find_right("浙A12345", rights, True) == (None, False)                  # 皖 or 苏: ambiguous
    assert find_right("京C00000", rights, True) == (None, False)
    with pytest.raises(ValueError):
        find_right("??", rights, True)


# -- entry --------------------------------------------------------------------------------------------------

RIGHTS = {r.plate: r for r in [
    right("皖A11111", "resident", holder="unit-1-101"),
    right("皖A22222", "resident", fixed_space=True),
    right("皖A33333", "monthly", valid_from=date(2026, 5, 1), valid_until=date(2026, 5, 31)),
    right("皖A44444", "monthly", valid_from=date(2026, 4, 1), valid_until=date(2026, 4, 30)),   # expired
    right("皖A55555", "monthly", valid_from=date(2026, 4, 1), valid_until=date(2026, 5, 7), grace_days=3),
    right("皖A66666", "monthly", valid_from=date(2026, 6, 1), valid_until=date(2026, 6, 30)),
    right("皖A77777", "staff"),
    right("皖A88888", "visitor", valid_from=TODAY, valid_until=TODAY, free_minutes=120, holder="unit-2-202"),
    right("皖A99999", "blacklist"),
]}


def enter(plate, confidence=0.95, occupied=10, capacity=100, online=True, policy=LANE, inside=False):
    return entry_decision(plate, confidence, RIGHTS, TODAY, occupied, capacity, online, policy, inside)


def test_entry_reasons():
    assert enter("皖A11111") == EntryDecision(True, "resident", "resident", True, "welcome")
    assert enter("皖A22222") == EntryDecision(True, "resident", "resident", False, "welcome")   # fixed space
    assert enter("皖A33333") == EntryDecision(True, "monthly_pass", "monthly", True, "welcome")
    assert enter("皖A77777") == EntryDecision(True, "staff", "staff", True, "welcome")
    assert enter("皖A88888") == EntryDecision(True, "visitor", "visitor", True, "welcome")
    assert enter("京C12345") == EntryDecision(True, "visitor", "visitor", True, "welcome")


def test_pass_grace_days():
    assert enter("皖A55555").reason == "pass_in_grace"                                  # May 8-10: grace
    late = entry_decision("皖A55555", 0.95, RIGHTS, date(2026, 5, 11), 0, 10, True, LANE)
    assert (late.open, late.reason, late.kind) == (True, "pass_expired", "monthly")
    first = entry_decision("皖A33333", 0.95, RIGHTS, date(2026, 5, 1), 0, 10, True, LANE)
    last = entry_decision("皖A33333", 0.95, RIGHTS, date(2026, 5, 31), 0, 10, True, LANE)
    assert first.reason == last.reason == "monthly_pass"                             # both days inclusive


def test_lapsed_passes_are_priced_as_visitors():
    assert enter("皖A44444") == EntryDecision(True, "pass_expired", "monthly", True, "welcome")
    assert enter("皖A66666") == EntryDecision(True, "not_yet_valid", "monthly", True, "welcome")
    assert enter("皖A44444", occupied=100).reason == "lot_full"


def test_lot_full_stops_visitors_not_residents_staff_or_passes():
    for plate in ("京C12345", "皖A88888"):
        assert enter(plate, occupied=100) == EntryDecision(False, "lot_full", enter(plate).kind, False, "lot_full")
        assert not enter(plate, occupied=120).open
    for plate, reason in (("皖A11111", "resident"), ("皖A77777", "staff"), ("皖A33333", "monthly_pass"),
                          ("皖A55555", "pass_in_grace")):
        decision = enter(plate, occupied=100)
        assert decision.open and decision.reason == reason


def test_blacklist_comes_first():
    assert enter("皖A99999") == EntryDecision(False, "blacklisted", "blacklist", False, "not_allowed")
    assert enter("皖A99999", confidence=0.1).reason == "blacklisted"
    assert enter("皖A99999", inside=True).reason == "blacklisted"
    fuzzy = enter("苏A99999")                                # only one candidate: 皖A99999, the guard checks
    assert (fuzzy.open, fuzzy.reason, fuzzy.message) == (False, "blacklisted", "confirm_with_guard")


def test_low_confidence_and_unreadable_reads_wait_for_a_person():
    assert enter("皖A11111", confidence=0.79) == EntryDecision(False, "low_confidence", "resident", False,
                                                               "confirm_with_guard")
    assert enter("皖A11111", confidence=0.80).open
    assert enter("?!", confidence=0.99).reason == "low_confidence"
    assert enter("皖A11111", confidence=0.5, policy=LanePolicy(low_confidence=0.4)).open


def test_fuzzy_province_lets_a_resident_in():
    assert enter("苏A11111") == EntryDecision(True, "resident", "resident", True, "welcome")
    strict = entry_decision("苏A11111", 0.95, RIGHTS, TODAY, 0, 10, True, LANE, tolerate_province=False)
    assert strict.reason == "visitor"


def test_already_inside_opens_without_a_new_space():
    assert enter("京C12345", inside=True, occupied=100) == EntryDecision(True, "already_inside", "visitor", False,
                                                                         "welcome")
    assert enter("皖A11111", inside=True).reason == "already_inside"


def test_lane_without_visitors():
    closed = LanePolicy(visitors_allowed=False)
    assert enter("京C12345", policy=closed) == EntryDecision(False, "visitors_not_allowed", "visitor", False,
                                                             "not_allowed")
    assert enter("皖A88888", policy=closed).reason == "visitors_not_allowed"
    assert enter("皖A44444", policy=closed).reason == "visitors_not_allowed"
    assert enter("皖A11111", policy=closed).open


def test_offline_visitors_follow_the_lane_policy():
    assert enter("京C12345", online=False) == EntryDecision(True, "offline_visitor", "visitor", True, "welcome")
    refuse, confirm = LanePolicy(offline_visitors="refuse"), LanePolicy(offline_visitors="confirm")
    assert enter("京C12345", online=False, policy=refuse) == EntryDecision(False, "offline_visitor", "visitor",
                                                                           False, "not_allowed")
    assert enter("皖A44444", online=False, policy=confirm) == EntryDecision(False, "offline_visitor", "monthly",
                                                                            False, "confirm_with_guard")
    # known from the local copy of the rights: they work offline
    assert enter("皖A33333", online=False, policy=refuse).reason == "monthly_pass"
    assert enter("皖A11111", online=False, policy=refuse).reason == "resident"
    assert enter("皖A88888", online=False, policy=refuse).reason == "visitor"
    assert enter("京C12345", online=False, occupied=100).reason == "lot_full"


def test_settings_are_checked_when_built():
    with pytest.raises(ValueError):
        LanePolicy(offline_visitors="maybe")
    with pytest.raises(ValueError):
        LanePolicy(no_entry_record_fee_fen=-1)
    with pytest.raises(ValueError):
        VehicleRight("皖A12345", "vip")
    for bad in (dict(free_minutes=-1), dict(increment_minutes=0), dict(increment_fen=1.5), dict(daily_cap_fen=-5),
                dict(night_increment_fen=-1), dict(night_start="25:00"), dict(night_end=""),
                dict(night_start="07:00", night_end="07:00"), dict(currency="yuan")):
        with pytest.raises(ValueError):
            Tariff(**bad)


# -- tariffs ------------------------------------------------------------------------------------------------

def test_free_minutes_then_the_whole_stay_is_charged():
    t = Tariff()
    p = price(t, at(10, 9), at(10, 9, 14), SH)
    assert (p.fen, p.free, p.minutes, p.currency) == (0, True, 14, "CNY")
    assert fen(t, at(10, 9), minutes=15) == 0
    assert fen(t, at(10, 9), minutes=15, seconds=1) == 500          # 16 min: the first period, from entry
    assert fen(t, at(10, 9), minutes=60) == 500
    assert fen(t, at(10, 9), minutes=60, seconds=1) == 700          # a started increment
    assert fen(t, at(10, 9), minutes=61) == 500 + 200
    assert fen(t, at(10, 9), minutes=90) == 700
    assert fen(t, at(10, 9), minutes=91) == 900
    assert price(t, at(10, 9), at(10, 9), SH).free


def test_a_hosts_visitor_gets_extra_free_minutes():
    t = Tariff()
    assert price(t, at(10, 9), at(10, 11, 15), SH, free_minutes_extra=120).fen == 0
    assert price(t, at(10, 9), at(10, 11, 16), SH, free_minutes_extra=120).fen == 500 + 3 * 200


def test_night_increments_are_priced_by_when_they_start():
    t = Tariff(night_increment_fen=100)                   # night 22:00-07:00
    p = price(t, at(10, 21), at(10, 23, 31), SH)          # 21:00 first period, 22:00..23:30 night
    assert (p.fen, p.capped) == (500 + 4 * 100, False)
    assert any("night" in line for line in p.lines)
    assert fen(t, at(10, 21, 30), minutes=61) == 500 + 100              # 22:30 starts at night
    assert fen(t, at(11, 6), hours=1, minutes=31) == 500 + 200 + 200    # 07:00, 07:30 are day again
    assert fen(Tariff(night_increment_fen=100, night_start=""), at(10, 21), minutes=151) == 1300   # night off
    assert fen(Tariff(), at(10, 21), minutes=151) == 500 + 4 * 200       # no night price: day price


def test_daily_cap():
    t = Tariff(daily_cap_fen=3000)
    p = price(t, at(10, 8), at(10, 20), SH)              # 500 + 22 * 200 = 4900
    assert (p.fen, p.capped) == (3000, True)
    assert any("daily cap 2026-05-10" in line for line in p.lines)
    # 20:00 to 10:00: 500 + 6 * 200 on the 10th; 20 * 200 on the 11th, capped
    assert fen(t, at(10, 20), hours=14) == 1700 + 3000


def test_24h_cap():
    t = Tariff(cap_24h_fen=4000)
    assert fen(t, at(10, 10), hours=24) == 4000
    assert fen(t, at(10, 10), hours=24, minutes=1) == 4000 + 200       # the second block started
    assert fen(t, at(10, 10), hours=48) == 8000
    assert fen(Tariff(), at(10, 10), hours=48) == 500 + 94 * 200


def test_daily_cap_applies_before_the_24h_cap():
    # 20:00 to 20:00: the 10th costs 500 + 6 * 200 = 1700, the 11th 40 * 200 = 8000, capped to 3000
    assert fen(Tariff(daily_cap_fen=3000), at(10, 20), hours=24) == 4700
    assert fen(Tariff(daily_cap_fen=3000, cap_24h_fen=5000), at(10, 20), hours=24) == 4700
    assert fen(Tariff(daily_cap_fen=3000, cap_24h_fen=4000), at(10, 20), hours=24) == 4000


def test_a_month_is_bounded_by_the_caps_and_fast():
    t = Tariff(daily_cap_fen=3000, cap_24h_fen=4000, night_increment_fen=100)
    assert fen(Tariff(daily_cap_fen=3000), at(1, 0), days=30) == 30 * 3000
    p = price(t, at(1, 10), at(31, 10), SH)
    # block 0 is the 1st (3000) plus the 2nd before 10:00 (14 * 100 + 6 * 200 = 2600), capped at 4000;
    # every later block is the rest of a day's cap (400) and the next morning (2600)
    assert p.capped and p.fen == 4000 + 29 * (400 + 2600)
    best = min(_timed(price, t, at(1, 10), at(31, 10), SH) for _ in range(5))
    assert best < 0.005


def _timed(fn, *args) -> float:
    start = clock.perf_counter()
    fn(*args)
    return clock.perf_counter() - start


def test_a_stay_is_real_elapsed_time_and_night_is_the_local_clock():
    t = Tariff(night_increment_fen=100)
    # the same instants, written in another zone, cost the same
    assert price(t, at(10, 21), at(11, 3), SH) == price(t, at(10, 21).astimezone(UTC), at(11, 3).astimezone(UTC), SH)
    # Berlin, the spring-forward night of 29 March 2026: 21:00 to 08:00 local is 10 h; 16 increments
    # start between 22:00 and 06:30 local (02:00-03:00 does not exist), two in the day after 07:00
    berlin = ZoneInfo("Europe/Berlin")
    p = price(t, datetime(2026, 3, 28, 21, tzinfo=berlin), datetime(2026, 3, 29, 8, tzinfo=berlin), "Europe/Berlin")
    assert (p.minutes, p.fen) == (600, 500 + 16 * 100 + 2 * 200)


def test_bad_input_is_refused():
    t = Tariff()
    with pytest.raises(ValueError):
        price(t, datetime(2026, 5, 10, 9), at(10, 10), SH)            # naive
    with pytest.raises(ValueError):
        price(t, at(10, 10), at(10, 9), SH)
    with pytest.raises(ValueError):
        price(t, at(10, 9), at(10, 10), "Mars/Olympus")
    with pytest.raises(ValueError):
        price(t, at(10, 9), at(10, 10), SH, free_minutes_extra=-1)


# -- exit ---------------------------------------------------------------------------------------------------

def leave(r=None, entered=at(10, 9), now=at(10, 10, 1), paid=0, paid_until=None, online=True, policy=LANE,
          confidence=0.95, tariff=Tariff()):
    return exit_decision(r, entered, now, paid, paid_until, tariff, SH, online, policy, confidence, now.date())


def test_exit_reasons():
    assert leave(RIGHTS["皖A11111"]) == ExitDecision(True, "resident", 0, "have_a_good_trip")
    assert leave(RIGHTS["皖A77777"]).reason == "pass"
    assert leave(RIGHTS["皖A33333"]) == ExitDecision(True, "pass", 0, "have_a_good_trip")
    assert leave(RIGHTS["皖A55555"]).reason == "pass"                                # in grace
    assert leave(now=at(10, 9, 10)) == ExitDecision(True, "free", 0, "have_a_good_trip")
    assert leave() == ExitDecision(False, "fee_due", 700, "pay_at_exit")
    assert leave(RIGHTS["皖A99999"]) == ExitDecision(False, "blacklisted", 0, "confirm_with_guard")
    assert leave(confidence=0.3) == ExitDecision(False, "low_confidence", 0, "confirm_with_guard")


def test_paid_exits_and_the_exit_window():
    window = at(10, 10, 15)
    assert leave(paid=700, paid_until=window, now=at(10, 10, 10)) == ExitDecision(True, "paid", 0,
                                                                                  "have_a_good_trip")
    assert leave(paid=500, paid_until=window, now=window).reason == "paid"   # the window's price stands
    # past the window: the whole stay (100 min: 500 + 2 * 200) minus what was paid
    assert leave(paid=700, paid_until=window, now=at(10, 10, 40)) == ExitDecision(False, "fee_due", 200,
                                                                                  "pay_at_exit")
    assert leave(paid=2000, paid_until=window, now=at(10, 10, 40)).reason == "paid"          # never negative
    assert leave(paid=700, now=at(10, 10, 20)).reason == "paid"                             # paid at the cashier
    assert exit_fee(Tariff(), at(10, 9), at(10, 10, 40), SH, paid_fen=700, paid_until=window) == 200
    assert exit_fee(Tariff(), at(10, 9), at(10, 10, 40), SH, paid_fen=5000) == 0


def test_unpaid_offline_exits_follow_the_lane_policy():
    assert leave(online=False) == ExitDecision(False, "offline_wait", 700, "wait_for_cashier")
    opened = leave(online=False, policy=LanePolicy(offline_unpaid_exit="open"))
    assert opened == ExitDecision(True, "offline_open_debt", 700, "have_a_good_trip")
    assert leave(online=False, now=at(10, 9, 5)).reason == "free"
    assert leave(RIGHTS["皖A33333"], online=False).reason == "pass"


def test_exit_without_an_entry_record():
    assert leave(entered=None) == ExitDecision(False, "no_entry_record", 2000, "pay_at_exit")
    assert leave(entered=None, paid=2000) == ExitDecision(True, "no_entry_record", 0, "have_a_good_trip")
    assert leave(entered=None, policy=LanePolicy(no_entry_record_exit="free")).open
    assert leave(entered=None, policy=LanePolicy(no_entry_record_exit="confirm")) == ExitDecision(
        False, "no_entry_record", 0, "confirm_with_guard")
    assert leave(entered=None, online=False).reason == "offline_wait"
    assert leave(RIGHTS["皖A11111"], entered=None).reason == "resident"


def test_exit_of_visitors_and_lapsed_passes():
    visitor = RIGHTS["皖A88888"]                                           # 120 free minutes, valid on the 10th
    assert leave(visitor, now=at(10, 11)).reason == "free"
    assert leave(visitor, now=at(10, 11, 16)).fee_fen == 500 + 3 * 200
    # a pass whose grace ended on 10 May: only the stay from 11 May 00:00 is charged (60 min + 1 increment)
    expired = RIGHTS["皖A55555"]
    d = exit_decision(expired, at(9, 8), at(11, 1, 1), 0, None, Tariff(), SH, True, LANE, 0.95, date(2026, 5, 11))
    assert (d.reason, d.fee_fen) == ("fee_due", 700)


def test_long_stays_are_flagged():
    assert not flag_long_stay(at(1, 9), at(4, 8, 59))
    assert flag_long_stay(at(1, 9), at(4, 9))
    assert flag_long_stay(at(1, 9), at(2, 9), days=1)
    with pytest.raises(ValueError):
        flag_long_stay(datetime(2026, 5, 1), at(4, 9))


# -- properties ---------------------------------------------------------------------------------------------

def reference_fen(t: Tariff, entered: datetime, left: datetime, tz: str, extra: int = 0) -> int:
    """The tariff, one period at a time: slow and plain, to check the fast one against."""
    site, start = ZoneInfo(tz), entered.astimezone(UTC)
    stay = left.astimezone(UTC) - start
    minutes = -(-stay // timedelta(microseconds=1) // 60_000_000)
    if minutes <= t.free_minutes + extra:
        return 0
    night = t.night()
    periods = [(0, t.first_period_fen)]
    s = t.first_period_minutes
    while s < minutes:
        local = (start + timedelta(minutes=s)).astimezone(site)
        m = local.hour * 60 + local.minute
        is_night = night is not None and (night[0] <= m < night[1] if night[0] < night[1]
                                          else m >= night[0] or m < night[1])
        periods.append((s, t.night_increment_fen if is_night else t.increment_fen))
        s += t.increment_minutes
    days: dict[date, int] = {}
    blocks: dict[int, int] = {}
    for s, cost in periods:
        day = (start + timedelta(minutes=s)).astimezone(site).date()
        if t.daily_cap_fen:
            cost = min(cost, t.daily_cap_fen - days.get(day, 0))
        days[day] = days.get(day, 0) + cost
        blocks[s // 1440] = blocks.get(s // 1440, 0) + cost
    return sum(min(v, t.cap_24h_fen) if t.cap_24h_fen else v for v in blocks.values())


NIGHTS = [("", ""), ("22:00", "07:00"), ("02:30", "03:30"), ("06:00", "20:00"), ("00:00", "01:00")]
tariffs = st.builds(
    lambda free, first, first_fen, inc, inc_fen, night, night_fen, daily, cap24: Tariff(
        free, first, first_fen, inc, inc_fen, night[0], night[1], night_fen, daily, cap24),
    st.integers(0, 30), st.integers(0, 120), st.integers(0, 1000), st.integers(5, 60), st.integers(0, 500),
    st.sampled_from(NIGHTS), st.none() | st.integers(0, 500),
    st.sampled_from([0, 0, 1, 1500, 3000]), st.sampled_from([0, 0, 1, 2500, 6000]))
# around the 2026 DST changes in Berlin and New York, and a quiet week
entries = st.builds(lambda base, s, us: base + timedelta(seconds=s, microseconds=us),
                    st.sampled_from([datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 10, 23, tzinfo=UTC),
                                     datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)]),
                    st.integers(0, 3 * 86400), st.sampled_from([0, 0, 1, 999_999]))
zones = st.sampled_from([SH, SH, "Europe/Berlin", "America/New_York"])
stays = st.integers(0, 4 * 86400)


@pytest.mark.parametrize("tz, night, around", [
    ("Europe/Berlin", ("02:30", "03:30"), datetime(2026, 3, 29, 1, tzinfo=UTC)),      # in the spring gap
    ("Europe/Berlin", ("02:30", "03:30"), datetime(2026, 10, 25, 1, tzinfo=UTC)),     # twice in autumn
    ("America/New_York", ("22:00", "02:15"), datetime(2026, 11, 1, 6, tzinfo=UTC)),
    (SH, ("22:00", "07:00"), datetime(2026, 5, 10, 16, tzinfo=UTC)),
])
def test_clock_changes_match_the_reference(tz, night, around):
    t = Tariff(free_minutes=0, first_period_minutes=10, first_period_fen=50, increment_minutes=10, increment_fen=20,
               night_start=night[0], night_end=night[1], night_increment_fen=7, daily_cap_fen=900, cap_24h_fen=1000)
    for step in range(0, 6 * 60, 7):
        entered = around - timedelta(hours=3, minutes=step, seconds=13)
        for hours in (1, 3, 5, 30):
            left = entered + timedelta(hours=hours)
            assert price(t, entered, left, tz).fen == reference_fen(t, entered, left, tz), (entered, hours)


@settings(max_examples=150, deadline=None)
@given(tariffs, entries, stays, zones)
def test_price_matches_the_period_by_period_reference(t, entered, seconds, tz):
    left = entered + timedelta(seconds=seconds)
    p = price(t, entered, left, tz)
    assert type(p.fen) is int and p.fen >= 0
    assert p.fen == reference_fen(t, entered, left, tz)


@settings(max_examples=100, deadline=None)
@given(tariffs, entries, stays, stays, zones)
def test_price_never_decreases_with_a_longer_stay(t, entered, a, b, tz):
    shorter, longer = sorted((a, b))
    assert (price(t, entered, entered + timedelta(seconds=shorter), tz).fen
            <= price(t, entered, entered + timedelta(seconds=longer), tz).fen)


@settings(max_examples=100, deadline=None)
@given(tariffs, entries, st.integers(0, 9 * 86400), zones)
def test_price_stays_under_the_caps(t, entered, seconds, tz):
    left = entered + timedelta(seconds=seconds)
    p = price(t, entered, left, tz)
    site = ZoneInfo(tz)
    days_touched = (left.astimezone(site).date() - entered.astimezone(site).date()).days + 1
    blocks = max(1, -(-seconds // 86400))
    assert type(p.fen) is int and p.fen >= 0
    if t.daily_cap_fen:
        assert p.fen <= t.daily_cap_fen * days_touched
    if t.cap_24h_fen:
        assert p.fen <= t.cap_24h_fen * blocks
    if p.capped:
        assert p.fen < reference_fen(replace(t, daily_cap_fen=0, cap_24h_fen=0), entered, left, tz)


@settings(max_examples=100, deadline=None)
@given(tariffs, entries, st.integers(0, 600), zones, st.integers(0, 240))
def test_free_stays_cost_nothing(t, entered, extra, tz, seconds_cap):
    limit = t.free_minutes + extra
    seconds = min(limit * 60, seconds_cap * 60)
    p = price(t, entered, entered + timedelta(seconds=seconds), tz, free_minutes_extra=extra)
    assert p.fen == 0 and p.free and not p.capped
