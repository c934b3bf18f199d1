"""Billing rules: plain, exact integer arithmetic; no SQL, no AMQP.

Units used everywhere:
- money: integer fen (1/100 CNY) with the currency beside it;
- built-up area: hundredths of a square metre (89.50 m2 -> 8950);
- rates: milli-fen (1/1000 fen) per m2 per month for area fees, or per month for fixed fees
  (2.50 CNY/m2 -> 250000), so a rate with up to five decimals of a yuan is stored exactly;
- late-fee rates and caps: parts per million (0.05 % a day -> 500 ppm).

Rounding happens once per invoice line (and once per invoice's accrued late fee), to the fen,
with the site's rounding rule (default ROUND_HALF_UP, the usual rule for Chinese invoices).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

CURRENCIES = ("CNY",)
ROUNDINGS = ("half_up", "half_even", "down", "up")
CYCLES = {"monthly": 1, "quarterly": 3, "yearly": 12}
METHODS = ("cash", "card", "bank", "online")
LATE_FEE_ORDERS = ("first", "last")
AGING_BUCKETS = ("0-30", "31-60", "61-90", "90+")
MICRO = 1_000_000           # late fees accrue in micro-fen (fen x ppm)


class RuleError(ValueError):
    """Input that breaks a billing rule; the message says which."""


# -- parsing at the boundary ----------------------------------------------------------------------

def _decimal(value, what: str) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise RuleError(f"{what} must be a decimal string like '123.45' (not a float), got {value!r}")
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise RuleError(f"{what} must be a number like '123.45', got {value!r}") from None
    if not d.is_finite():
        raise RuleError(f"{what} must be a finite number, got {value!r}")
    return d


def _scaled(value, what: str, places: int) -> int:
    d = _decimal(value, what)
    if d.as_tuple().exponent < -places and d != d.quantize(Decimal(1).scaleb(-places)):
        raise RuleError(f"{what} has more than {places} decimals: {value!r}")
    return int(d.scaleb(places))


def parse_amount(amount=None, amount_fen=None, what: str = "amount") -> int:
    """A positive amount in fen, from `amount` (yuan, a string like "123.45", at most two decimals)
    or `amount_fen` (an integer number of fen). Negative, zero, floats and more decimals are refused."""
    if (amount is None) == (amount_fen is None):
        raise RuleError(f"give exactly one of {what} (yuan, e.g. '123.45') or {what}_fen (integer fen)")
    if amount_fen is not None:
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
            raise RuleError(f"{what}_fen must be a whole number of fen, got {amount_fen!r}")
        fen = amount_fen
    else:
        fen = _scaled(amount, what, 2)
    if fen <= 0:
        raise RuleError(f"{what} must be more than zero, got {fen / 100:.2f}" if fen else f"{what} must not be zero")
    if fen > 10**13:
        raise RuleError(f"{what} is implausibly large: {fen} fen")
    return fen


def parse_area(value) -> int:
    """Built-up area in hundredths of a m2 from a string like "89.50" (at most two decimals)."""
    x100 = _scaled(value, "area_m2", 2)
    if x100 <= 0:
        raise RuleError(f"area_m2 must be more than zero, got {value!r}")
    return x100


def parse_rate(value) -> int:
    """A rate in yuan (e.g. "2.50" per m2 per month, or "30.00" a month) as milli-fen."""
    mfen = _scaled(value, "rate", 5)
    if mfen < 0:
        raise RuleError(f"rate must not be negative, got {value!r}")
    return mfen


def parse_ppm(value, what: str) -> int:
    """A fraction such as "0.0005" (0.05 %) as parts per million (at most six decimals)."""
    ppm = _scaled(value, what, 6)
    if ppm < 0:
        raise RuleError(f"{what} must not be negative, got {value!r}")
    return ppm


def check_currency(currency: str, expected: str) -> None:
    if currency != expected:
        raise RuleError(f"currency {currency!r} does not match the account's currency {expected!r}")


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def area_text(x100: int) -> str:
    return f"{x100 // 100}.{x100 % 100:02d}"


# -- rounding -------------------------------------------------------------------------------------

def round_div(numerator: int, denominator: int, mode: str = "half_up") -> int:
    """numerator / denominator rounded to an integer by `mode`, exactly (non-negative numerator)."""
    if numerator < 0 or denominator <= 0:
        raise RuleError("round_div takes a non-negative numerator and a positive denominator")
    q, r = divmod(numerator, denominator)
    if r == 0 or mode == "down":
        return q
    if mode == "up":
        return q + 1
    twice = 2 * r
    if twice > denominator or (twice == denominator and (mode == "half_up" or q % 2 == 1)):
        return q + 1
    return q


# -- periods --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Period:
    name: str       # "2026-11", "2026-Q4" or "2026"
    cycle: str
    start: date
    months: int

    def month_keys(self) -> list[str]:
        y, m = self.start.year, self.start.month
        keys = []
        for _ in range(self.months):
            keys.append(f"{y:04d}-{m:02d}")
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return keys


def parse_period(name: str, cycle: str = "monthly") -> Period:
    if cycle not in CYCLES:
        raise RuleError(f"cycle must be one of {', '.join(CYCLES)}, got {cycle!r}")
    patterns = {"monthly": r"(\d{4})-(0[1-9]|1[0-2])", "quarterly": r"(\d{4})-Q([1-4])", "yearly": r"(\d{4})"}
    match = re.fullmatch(patterns[cycle], name or "")
    if not match:
        examples = {"monthly": "2026-11", "quarterly": "2026-Q4", "yearly": "2026"}
        raise RuleError(f"a {cycle} period looks like {examples[cycle]!r}, got {name!r}")
    year = int(match.group(1))
    month = {"monthly": lambda: int(match.group(2)), "quarterly": lambda: 3 * int(match.group(2)) - 2,
             "yearly": lambda: 1}[cycle]()
    return Period(name, cycle, date(year, month, 1), CYCLES[cycle])


# -- charges --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    account_id: int
    unit_id: str
    building: str
    unit_type: str
    area_x100: int


@dataclass(frozen=True)
class FeeItem:
    fee_item_id: int
    code: str
    name: str
    kind: str                       # area, fixed, pass
    rates: dict                     # {(scope, value): rate_mfen}; scope unit, building, unit_type, default


RECURRING_KINDS = ("area", "fixed", "pass")
FEE_KINDS = (*RECURRING_KINDS, "one_off", "parking", "late_fee")


def rate_for(item: FeeItem, unit: Unit) -> int | None:
    """The most specific rate: the unit's own, its building's, its unit type's, the site default."""
    for key in (("unit", unit.unit_id), ("building", unit.building), ("unit_type", unit.unit_type), ("default", "")):
        if key in item.rates:
            return item.rates[key]
    return None


def pass_months(period: Period, start: str | None, end: str | None) -> int:
    """How many months of `period` a subscription from month `start` to `end` (inclusive) covers."""
    return sum(1 for k in period.month_keys() if (start is None or k >= start) and (end is None or k <= end))


def lines_for(unit: Unit, items: list[FeeItem], period: Period, rounding: str,
              passes: list[tuple[int, int, int, str | None, str | None]] = ()) -> list[tuple[int, str, int]]:
    """The invoice lines of one unit for one period: (fee_item_id, description, amount_fen).

    area: area x rate x months, rounded once; fixed: rate x months; pass: the unit's passes
    (fee_item_id, monthly_fen, quantity, start_month, end_month) for the months they cover.
    Items without an applicable rate, and zero amounts, give no line."""
    out = []
    for item in items:
        if item.kind == "pass":
            months = [(m, q, fen) for fid, fen, q, s, e in passes if fid == item.fee_item_id
                      for m in [pass_months(period, s, e)] if m]
            amount = sum(m * q * fen for m, q, fen in months)
            if amount > 0:
                qty = sum(q for _, q, _ in months)
                out.append((item.fee_item_id, f"{item.name} x{qty} ({period.name})", amount))
            continue
        rate = rate_for(item, unit)
        if not rate:
            continue
        if item.kind == "area":
            amount = round_div(unit.area_x100 * rate * period.months, 100 * 1000, rounding)
            desc = f"{item.name} {area_text(unit.area_x100)} m2 x {rate / 100000:g} x {period.months} mo"
        else:
            amount = round_div(rate * period.months, 1000, rounding)
            desc = f"{item.name} x {period.months} mo"
        if amount > 0:
            out.append((item.fee_item_id, desc, amount))
    return out


# -- allocation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Debt:
    invoice_id: int
    component: str          # principal or late_fee
    due_date: date
    outstanding: int


def allocation_order(debts: list[Debt], late_fees: str = "last") -> list[Debt]:
    """Oldest debt first (due date, then invoice id). late_fees="first": every late fee before
    any principal; "last": every principal before any late fee."""
    if late_fees not in LATE_FEE_ORDERS:
        raise RuleError(f"late fee order must be 'first' or 'last', got {late_fees!r}")
    late_rank = 0 if late_fees == "first" else 1

    def key(d: Debt):
        return (late_rank if d.component == "late_fee" else 1 - late_rank, d.due_date, d.invoice_id)
    return sorted((d for d in debts if d.outstanding > 0), key=key)


def allocate(amount: int, debts: list[Debt], late_fees: str = "last") -> tuple[list[tuple[Debt, int]], int]:
    """Spread `amount` fen over the debts in order; returns ([(debt, applied)], prepaid remainder)."""
    if amount < 0:
        raise RuleError("an allocation amount cannot be negative")
    left = amount
    applied = []
    for debt in allocation_order(debts, late_fees):
        if left == 0:
            break
        take = min(left, debt.outstanding)
        applied.append((debt, take))
        left -= take
    return applied, left


def invoice_status(total: int, paid: int, credited: int, late_fee: int, late_paid: int) -> str:
    """issued (nothing paid), partly_paid, or paid (nothing left, principal and late fee)."""
    left = total - paid - credited + late_fee - late_paid
    if left <= 0:
        return "paid"
    return "partly_paid" if paid or late_paid or credited else "issued"


# -- late fees (滞纳金) -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LateFeePolicy:
    ppm_per_day: int        # 500 = 0.05 % of the unpaid principal a day
    grace_days: int         # a day accrues when it is more than grace_days after the due date
    cap_ppm: int            # cap on the accrued fee, as a fraction of the invoice's principal


def late_fee_days(due: date, grace_days: int, accrued_through: date | None, as_of: date) -> int:
    """How many new days accrue when the job runs for `as_of` (the first is due + grace + 1)."""
    first = due + timedelta(days=grace_days + 1)
    if accrued_through is not None:
        first = max(first, accrued_through + timedelta(days=1))
    return max(0, (as_of - first).days + 1)


def accrue(accrued_micro: int, unpaid_principal: int, days: int, principal: int, policy: LateFeePolicy) -> int:
    """The exact accrued late fee (micro-fen) after `days` more days on `unpaid_principal`, capped."""
    if days < 0 or unpaid_principal < 0 or accrued_micro < 0:
        raise RuleError("late fee accrual takes non-negative days and amounts")
    cap = principal * policy.cap_ppm
    return min(cap, accrued_micro + unpaid_principal * policy.ppm_per_day * days) if cap else \
        accrued_micro + unpaid_principal * policy.ppm_per_day * days


def late_fee_fen(accrued_micro: int, rounding: str = "half_up") -> int:
    """The fen charged for an exact accrual (rounded once, on the invoice's whole accrual)."""
    return round_div(accrued_micro, MICRO, rounding)


# -- arrears and dunning --------------------------------------------------------------------------

def aging_bucket(days_overdue: int) -> str | None:
    """0-30, 31-60, 61-90 or 90+ days past the due date; None when not due yet."""
    if days_overdue < 0:
        return None
    if days_overdue <= 30:
        return "0-30"
    if days_overdue <= 60:
        return "31-60"
    if days_overdue <= 90:
        return "61-90"
    return "90+"


def dunning_steps_reached(days_overdue: int, step_days: list[int]) -> list[int]:
    """Step numbers (1-based) whose day after the due date has come."""
    return [i + 1 for i, d in enumerate(sorted(step_days)) if days_overdue >= d]


# -- webhook signatures ---------------------------------------------------------------------------

def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(sign(secret, body), signature)
