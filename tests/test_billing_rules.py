"""Billing rules as plain code: amounts at the boundary, rounding, fee lines, allocation,
late fees, aging and dunning steps, webhook signatures."""
from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.billing import rules
from services.billing.rules import Debt, FeeItem, LateFeePolicy, RuleError, Unit


@pytest.mark.parametrize("value,fen", [("123.45", 12345), ("0.01", 1), ("10", 1000), ("7.50", 750), ("3.100", 310)])
def test_amounts_in_yuan_become_exact_fen(value, fen):
    assert rules.parse_amount(value) == fen


@pytest.mark.parametrize("kwargs,message", [
    ({"amount": "-1.00"}, "more than zero"), ({"amount": "0"}, "zero"), ({"amount": "1.001"}, "more than 2 decimals"),
    ({"amount": 1.5}, "not a float"), ({"amount": "abc"}, "number"), ({"amount": "NaN"}, "finite"),
    ({"amount_fen": -5}, "more than zero"), ({"amount_fen": "5"}, "whole number"), ({"amount_fen": True}, "whole"),
    ({}, "exactly one"), ({"amount": "1", "amount_fen": 100}, "exactly one"),
])
def test_bad_amounts_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(RuleError, match=message):
        rules.parse_amount(**kwargs)


def test_currency_must_match():
    rules.check_currency("CNY", "CNY")
    with pytest.raises(RuleError, match="does not match"):
        rules.check_currency("USD", "CNY")


@given(st.integers(0, 10**12), st.integers(1, 10**7))
def test_round_div_is_exact(n, d):
    exact = Fraction(n, d)
    assert rules.round_div(n, d, "down") == n // d
    assert rules.round_div(n, d, "up") == -(-n // d)
    half_up = rules.round_div(n, d, "half_up")
    assert abs(Fraction(half_up) - exact) <= Fraction(1, 2)
    if exact - (n // d) == Fraction(1, 2):
        assert half_up == n // d + 1 and rules.round_div(n, d, "half_even") % 2 == 0
    assert rules.round_div(n, d, "half_even") == round(exact)


def test_periods():
    assert rules.parse_period("2026-11").month_keys() == ["2026-11"]
    q = rules.parse_period("2026-Q4", "quarterly")
    assert q.start == date(2026, 10, 1) and q.month_keys() == ["2026-10", "2026-11", "2026-12"]
    assert rules.parse_period("2026", "yearly").months == 12
    with pytest.raises(RuleError, match="2026-Q4"):
        rules.parse_period("2026-11", "quarterly")


UNIT = Unit(1, "1-1-101", "1", "residential", 8950)
MGMT = FeeItem(1, "mgmt", "Management", "area", {("default", ""): 250000, ("building", "2"): 300000})
FIXED = FeeItem(2, "rubbish", "Rubbish", "fixed", {("unit_type", "residential"): 10000})
PASS = FeeItem(3, "pass", "Parking pass", "pass", {})


def test_area_fee_is_area_times_rate_rounded_once_per_line():
    # 89.50 m2 x 2.50 = 223.75; a quarter is 671.25 (rounded once, not three times)
    assert rules.lines_for(UNIT, [MGMT], rules.parse_period("2026-11"), "half_up")[0][2] == 22375
    assert rules.lines_for(UNIT, [MGMT], rules.parse_period("2026-Q4", "quarterly"), "half_up")[0][2] == 67125
    odd = Unit(2, "2-1-301", "2", "residential", 7625)       # building 2 rate: 76.25 x 3.00 = 228.75
    assert rules.lines_for(odd, [MGMT], rules.parse_period("2026-11"), "half_up")[0][2] == 22875
    third = Unit(3, "3-1-1", "3", "shop", 3333)               # 33.33 x 2.50 = 83.325 -> 83.33 / 83.32
    assert rules.lines_for(third, [MGMT], rules.parse_period("2026-11"), "half_up")[0][2] == 8333
    assert rules.lines_for(third, [MGMT], rules.parse_period("2026-11"), "half_even")[0][2] == 8332
    assert rules.lines_for(third, [FIXED], rules.parse_period("2026-11"), "half_up") == []   # not residential


def test_passes_bill_only_the_months_they_cover():
    q = rules.parse_period("2026-Q4", "quarterly")
    lines = rules.lines_for(UNIT, [PASS], q, "half_up", [(3, 30000, 2, "2026-11", None)])
    assert lines[0][2] == 2 * 2 * 30000


debts = st.lists(st.builds(Debt, st.integers(1, 50), st.sampled_from(["principal", "late_fee"]),
                           st.dates(date(2025, 1, 1), date(2027, 1, 1)), st.integers(0, 10**6)), max_size=12,
                 unique_by=lambda d: (d.invoice_id, d.component))


@given(st.integers(0, 5 * 10**6), debts, st.sampled_from(["first", "last"]))
def test_allocation_accounts_for_every_fen_oldest_first(amount, ds, late_fees):
    applied, prepaid = rules.allocate(amount, ds, late_fees)
    assert sum(fen for _, fen in applied) + prepaid == amount
    assert all(0 < fen <= d.outstanding for d, fen in applied)
    order = rules.allocation_order(ds, late_fees)
    # a prefix of the order is paid in full, at most one debt partly, nothing after it
    for i, (d, fen) in enumerate(applied):
        assert d == order[i]
        if i < len(applied) - 1:
            assert fen == d.outstanding
    if prepaid:
        assert len(applied) == len(order) and all(fen == d.outstanding for d, fen in applied)
    kinds = [d.component for d in order]
    first = "late_fee" if late_fees == "first" else "principal"
    assert kinds == sorted(kinds, key=lambda k: k != first)
    for a, b in zip(order, order[1:], strict=False):
        if a.component == b.component:
            assert (a.due_date, a.invoice_id) <= (b.due_date, b.invoice_id)


def test_invoice_status():
    assert rules.invoice_status(100, 0, 0, 0, 0) == "issued"
    assert rules.invoice_status(100, 40, 0, 0, 0) == "partly_paid"
    assert rules.invoice_status(100, 100, 0, 5, 0) == "partly_paid"      # the late fee is still owed
    assert rules.invoice_status(100, 100, 0, 5, 5) == "paid"


POLICY = LateFeePolicy(ppm_per_day=500, grace_days=10, cap_ppm=100_000)   # 0.05 % a day, cap 10 %


def test_late_fee_days_start_after_the_grace_period_and_never_repeat():
    due = date(2026, 11, 15)
    assert rules.late_fee_days(due, 10, None, date(2026, 11, 25)) == 0
    assert rules.late_fee_days(due, 10, None, date(2026, 11, 26)) == 1
    assert rules.late_fee_days(due, 10, date(2026, 11, 26), date(2026, 11, 26)) == 0
    assert rules.late_fee_days(due, 10, date(2026, 11, 26), date(2026, 11, 30)) == 4


@given(st.integers(1, 10**7), st.lists(st.integers(0, 40), min_size=1, max_size=8))
def test_late_fee_accrued_in_steps_equals_the_closed_form(principal, steps):
    accrued = 0
    for days in steps:
        accrued = rules.accrue(accrued, principal, days, principal, POLICY)
    exact = min(Fraction(principal * 500 * sum(steps), 10**6), Fraction(principal * 100_000, 10**6))
    assert Fraction(accrued, 10**6) == exact
    assert rules.late_fee_fen(accrued) == rules.round_div(accrued, 10**6)
    assert rules.late_fee_fen(accrued) <= principal // 10 + 1


def test_late_fee_example():
    # 433.75 unpaid for 46 days at 0.05 %: 9.97625 -> 9.98
    accrued = rules.accrue(0, 43375, 46, 43375, LateFeePolicy(500, 0, 0))
    assert accrued == 43375 * 500 * 46 and rules.late_fee_fen(accrued) == 998


@pytest.mark.parametrize("days,bucket", [(-1, None), (0, "0-30"), (30, "0-30"), (31, "31-60"), (60, "31-60"),
                                         (61, "61-90"), (90, "61-90"), (91, "90+"), (400, "90+")])
def test_aging_buckets(days, bucket):
    assert rules.aging_bucket(days) == bucket


def test_dunning_steps():
    assert rules.dunning_steps_reached(6, [7, 30, 60]) == []
    assert rules.dunning_steps_reached(31, [30, 7, 60]) == [1, 2]


def test_webhook_signatures():
    body = b'{"reference": "x"}'
    sig = rules.sign("s3cret", body)
    assert rules.signature_ok("s3cret", body, sig)
    assert not rules.signature_ok("s3cret", body + b" ", sig)
    assert not rules.signature_ok("other", body, sig)
    assert not rules.signature_ok("s3cret", body, None)


