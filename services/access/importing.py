"""Bulk import of units and people (with their cards and PIN) from CSV or XLSX: read, check, report.

Pure code: no database, no nameko. ``read_table`` turns a file into rows of trimmed strings,
``plan_import`` checks every row against the file itself and against what the site already has
(``Existing``) and returns the valid rows, normalized, with one ``RowReport`` per data row. The caller
applies the valid rows in one transaction.

File-level problems (unreadable or empty file, unknown or missing columns) raise ``ImportFileError``;
everything about a single row goes into that row's report.
"""
from __future__ import annotations

import codecs
import csv
import difflib
import gc
import io
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.access.rules import CARD_NUMBER, PERSON_KINDS

UNITS, PEOPLE = "units", "people"
SHEETS = (UNITS, PEOPLE)
COLUMNS = {
    UNITS: ("unit_id", "building", "unit", "room", "floor_area_m2"),
    PEOPLE: ("person_id", "name", "kind", "role", "unit_id", "phone", "card_numbers", "pin", "groups",
             "valid_from", "valid_until"),
}
REQUIRED_COLUMNS = {
    UNITS: ("unit_id", "building", "unit", "room"),
    PEOPLE: ("person_id", "name", "kind"),
}
PROGRESS_EVERY = 500
MAX_NAME, MAX_ROLE, MAX_UNIT_PART = 200, 64, 64     # the columns' sizes in services/access/tables.py

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CARD_RE = CARD_NUMBER
PIN_RE = re.compile(r"[0-9]{4,8}")
PHONE_RE = re.compile(r"\+?[0-9]{6,20}")
AREA_RE = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,2})?")
LIST_SEPARATORS = re.compile(r"[;,\uff1b\uff0c]")          # also the full-width ； and ， of Chinese input
LOCAL_TIME_RE = re.compile(r"([0-9]{4})[-/]([0-9]{1,2})[-/]([0-9]{1,2})[ T]([0-9]{1,2}):([0-9]{2})"
                           r"(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?")
DATE_RE = re.compile(r"[0-9]{4}[-/][0-9]{1,2}[-/][0-9]{1,2}")
ID_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, at most 64"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"       # .xls, and password-protected .xlsx


class ImportFileError(ValueError):
    """The file as a whole cannot be imported: the message says why."""


@dataclass(frozen=True)
class Existing:
    """What the site already has, to check the import against."""

    timezone: str                                    # IANA name; local times in the file are read in it
    person_ids: frozenset[str] = frozenset()
    unit_ids: frozenset[str] = frozenset()
    card_numbers: frozenset[str] = frozenset()       # active card numbers at the site
    pins: frozenset[str] = frozenset()               # PINs in use at the site (the digits)
    group_ids: frozenset[str] = frozenset()


@dataclass
class RowReport:
    """One non-blank data row: where it is, its key as given, and what is wrong with it."""

    sheet: str
    row: int                                         # spreadsheet row number, header = 1
    key: str                                         # unit_id / person_id as given, "" if missing
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class ImportPlan:
    units: list[dict] = field(default_factory=list)
    people: list[dict] = field(default_factory=list)
    report: list[RowReport] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        """Rows with at least one error."""
        return sum(1 for r in self.report if r.errors)

    @property
    def row_count(self) -> int:
        return len(self.report)

    def summary(self) -> dict:
        failing = [{"sheet": r.sheet, "row": r.row, "key": r.key, "errors": list(r.errors)}
                   for r in self.report if r.errors]
        return {"rows": self.row_count, "valid": self.row_count - len(failing), "errors": len(failing),
                "errors_by_row": failing}


Table = list[tuple[int, dict[str, str | None]]]


# -- reading ----------------------------------------------------------------------------------

def read_table(filename: str, data: bytes, kind: str | None = None) -> dict[str, Table]:
    """Rows of a CSV or XLSX file, by kind: ``{"units": [(row_no, {column: value})], "people": [...]}``.

    ``kind`` ("units" or "people") says what a CSV or a single-sheet workbook holds; when it is not
    given it is told from the header. A workbook with sheets named "units" and/or "people" is read by
    those names. Values are trimmed strings, None for empty cells; XLSX numbers that are whole come
    out without ".0", XLSX dates and times as ISO strings without offset (local times).
    """
    if kind is not None and kind not in SHEETS:
        raise ValueError(f"kind must be 'units' or 'people', got {kind!r}")
    name = filename or "the file"
    if not data or not data.strip():
        raise ImportFileError(f"{name} is empty")
    lower = name.lower()
    if data.startswith(_OLE_MAGIC) or lower.endswith(".xls"):
        raise ImportFileError(f"{name} is an old-style .xls or a password-protected workbook: "
                              "save it as .xlsx (without a password) or as CSV UTF-8")
    if data.startswith(b"PK\x03\x04") or lower.endswith((".xlsx", ".xlsm")):
        tables = _read_xlsx(name, data, kind)
    else:
        tables = [_table(kind, _csv_rows(name, data), name)]
    result: dict[str, Table] = {UNITS: [], PEOPLE: []}
    for sheet, rows in tables:
        result[sheet] = rows
    if not any(result.values()):
        raise ImportFileError(f"{name} has no data rows")
    return result


def _decode(name: str, data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")            # Excel's "Unicode Text"
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text = data.decode("gb18030")                        # CSV saved by Chinese Excel
            except UnicodeDecodeError:
                raise ImportFileError(f"{name} is not a CSV file in UTF-8 or GB18030") from None
    if "\x00" in text:
        raise ImportFileError(f"{name} is not a CSV or XLSX file (binary content)")
    return text


def _csv_rows(name: str, data: bytes) -> Iterator[tuple[int, list]]:
    text = _decode(name, data)
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max((",", "\t", ";"), key=first_line.count)     # ties keep ","
    try:
        yield from enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), start=1)
    except csv.Error as exc:
        raise ImportFileError(f"{name} is not a readable CSV file: {exc}") from None


def _read_xlsx(name: str, data: bytes, kind: str | None) -> list[tuple[str, Table]]:
    # imported here: only workbooks need it (it is not a dependency of the rest of the service)
    import openpyxl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                               # openpyxl's style/extension notes
        try:
            workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as exc:
            raise ImportFileError(f"{name} is not a readable XLSX workbook ({type(exc).__name__}: {exc})") from None
        try:
            named: dict[str, object] = {}
            for ws in workbook.worksheets:
                sheet = _header_name(ws.title)
                if sheet in SHEETS:
                    if sheet in named:
                        raise ImportFileError(f"{name} has more than one sheet named {sheet!r}")
                    named[sheet] = ws
            titles = ", ".join(repr(ws.title) for ws in workbook.worksheets)
            if named:
                if kind is not None and kind not in named:
                    raise ImportFileError(f"{name} has no {kind!r} sheet (its sheets: {titles})")
                chosen = list(named.items())
            elif len(workbook.worksheets) == 1:
                chosen = [(kind, workbook.worksheets[0])]
            else:
                raise ImportFileError(f"{name} has several sheets ({titles}): name the ones to import "
                                      "'units' and 'people'")
            tables = []
            for sheet, ws in chosen:
                where = f"{name}, sheet {ws.title!r}"
                rows = enumerate(ws.iter_rows(values_only=True), start=1)
                tables.append(_table(sheet or kind, rows, where, allow_empty=len(chosen) > 1))
            return tables
        except ImportFileError:
            raise
        except Exception as exc:                                      # a corrupt part found while reading
            raise ImportFileError(f"{name} is not a readable XLSX workbook ({type(exc).__name__}: {exc})") from None
        finally:
            workbook.close()


def _header_name(value) -> str:
    text = _cell(value) or ""
    return re.sub(r"\s+", "_", text.lower())


def _cell(value) -> str | None:
    """One cell as a trimmed string, None when empty."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().strip("\ufeff\u200b").strip()
        return text or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value).strip() or None


def _table(kind: str | None, rows: Iterable[tuple[int, Sequence]], where: str,
           allow_empty: bool = False) -> tuple[str, Table]:
    """(kind, data rows) of one sheet; its header is the first non-blank row. Checks the columns."""
    rows = iter(rows)
    for _row_no, header in rows:
        names = [_header_name(v) for v in header]
        if any(names):
            break
    else:
        if allow_empty:
            return kind or "", []
        raise ImportFileError(f"{where} is empty")
    kind = kind or _guess_kind(names, where)
    columns = _check_columns(kind, names, where)
    unnamed = [index for index, column in enumerate(names) if not column]
    width = len(names)
    out: Table = []
    for row_no, values in rows:
        cells = [_cell(v) for v in values]
        if not any(cells):
            continue                                                  # blank rows are skipped
        if len(cells) < width:
            cells.extend([None] * (width - len(cells)))
        for index in (*unnamed, *range(width, len(cells))):
            if cells[index] is not None:
                raise ImportFileError(f"{where}, row {row_no}: a value in column {_column_label(index)}, "
                                      f"which has no header: {_quote(cells[index])}")
        out.append((row_no, {column: cells[index] for index, column in columns}))
    return kind, out


def _guess_kind(names: list[str], where: str) -> str:
    if "person_id" in names:
        return PEOPLE
    if "building" in names or "room" in names:
        return UNITS
    raise ImportFileError(f"{where}: cannot tell whether it holds units or people; say which")


def _check_columns(kind: str, names: list[str], where: str) -> list[tuple[int, str]]:
    known = COLUMNS[kind]
    seen: dict[str, int] = {}
    unknown = []
    for index, column in enumerate(names):
        if not column:
            continue
        if column in seen:
            raise ImportFileError(f"{where}: column {column!r} appears twice in the header "
                                  f"(columns {_column_label(seen[column])} and {_column_label(index)})")
        seen[column] = index
        if column not in known:
            close = difflib.get_close_matches(column, known, n=1)
            unknown.append(f"{column!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if unknown:
        raise ImportFileError(f"{where}: unknown column(s) for {kind}: {', '.join(unknown)}; "
                              f"expected: {', '.join(known)}")
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in seen]
    if missing:
        raise ImportFileError(f"{where}: missing required column(s) for {kind}: {', '.join(missing)}")
    return [(index, column) for column, index in seen.items()]


def _column_label(index: int) -> str:
    letters, n = "", index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return f"{letters} ({index + 1})"


# -- checking ---------------------------------------------------------------------------------

def _quote(value: str, limit: int = 80) -> str:
    if len(value) > limit:
        value = value[:limit] + "…"
    return json.dumps(value, ensure_ascii=False)


def _value(record: dict, column: str) -> str | None:
    """A value of a row from ``read_table`` (or built by a caller: trimmed again, non-strings converted)."""
    value = record.get(column)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    return _cell(value)


def _split(value: str | None) -> list[str]:
    if value is None:
        return []
    return [item.strip() for item in LIST_SEPARATORS.split(value) if item.strip()]


class _Duplicates:
    """Values that must be unique within the file. The later row names the first one; at ``finish``
    the first row is told which rows repeat it, so neither goes in silently."""

    def __init__(self, column: str):
        self.column = column
        self.first: dict[str, tuple[RowReport, str]] = {}
        self.repeats: dict[str, list[int]] = {}

    def see(self, key: str, shown: str, report: RowReport) -> None:
        first = self.first.get(key)
        if first is None:
            self.first[key] = (report, shown)
            return
        report.errors.append(f"{self.column}: {_quote(shown)} is a duplicate of row {first[0].row}")
        self.repeats.setdefault(key, []).append(report.row)

    def finish(self) -> None:
        for key, rows in self.repeats.items():
            report, shown = self.first[key]
            where = "row " + str(rows[0]) if len(rows) == 1 else "rows " + ", ".join(map(str, rows))
            report.errors.append(f"{self.column}: {_quote(shown)} is repeated in {where}")


class _Progress:
    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def tick(self) -> None:
        self.done += 1
        if self.callback is not None and self.done % PROGRESS_EVERY == 0 and self.done != self.total:
            self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total, self.total)


class _Times:
    """valid_from / valid_until: ISO 8601 with offset, or a local time in the site's zone."""

    def __init__(self, timezone: str):
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        self.cache: dict[str, tuple[datetime | None, str | None]] = {}

    def parse(self, value: str) -> tuple[datetime | None, str | None]:
        hit = self.cache.get(value)
        if hit is None:
            hit = self.cache[value] = self._parse(value)
        return hit

    def _parse(self, value: str) -> tuple[datetime | None, str | None]:
        bad = (f"is not a valid time: use ISO 8601 with a UTC offset (2026-01-01T08:00:00+08:00) "
               f"or \"YYYY-MM-DD HH:MM\" in {self.timezone}")
        match = LOCAL_TIME_RE.fullmatch(value)
        try:
            if match:
                y, mo, d, h, mi, s, frac = match.groups()
                parsed = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0),
                                  int((frac or "0").ljust(6, "0")))
            else:
                if DATE_RE.fullmatch(value):                          # a date alone: which time of it?
                    return None, f"needs a time of day too, e.g. \"{value} 00:00\""
                parsed = datetime.fromisoformat(value)
        except ValueError:
            return None, bad
        if parsed.tzinfo is not None:
            return parsed, None
        local = parsed.replace(tzinfo=self.zone)
        try:
            round_trip = local.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None)
        except OverflowError:                                         # year 1 or 9999 and an offset
            return None, bad
        if round_trip != parsed:
            return None, f"does not exist in {self.timezone} (clocks change): give a UTC offset"
        if local.utcoffset() != parsed.replace(tzinfo=self.zone, fold=1).utcoffset():
            return None, f"is ambiguous in {self.timezone} (clocks change): give a UTC offset"
        return local, None


def plan_import(tables: dict[str, Table], existing: Existing,
                progress: Callable[[int, int], None] | None = None) -> ImportPlan:
    """Check every row; units first, so people may name units of the same file.

    ``progress(done, total)`` is called every 500 rows and once at the end with (total, total).
    """
    try:
        times = _Times(existing.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {existing.timezone!r}") from None
    unit_rows = tables.get(UNITS) or []
    people_rows = tables.get(PEOPLE) or []
    ticker = _Progress(progress, len(unit_rows) + len(people_rows))
    plan = ImportPlan()
    with _collector_paused():
        units_in_file = _plan_units(unit_rows, existing, plan, ticker)
        _plan_people(people_rows, existing, times, units_in_file, plan, ticker)
    ticker.finish()
    return plan


@contextmanager
def _collector_paused():
    """The cyclic garbage collector off while planning: the plan allocates a few objects per row and
    makes no cycles, and the collector's full passes over a large heap (the rows, the caller's sets)
    otherwise take more than half the time of a 50,000-row import."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plan_units(rows: Table, existing: Existing, plan: ImportPlan, ticker: _Progress) -> dict[str, RowReport]:
    """Returns unit_id -> the report of its first row in the file."""
    duplicates = _Duplicates("unit_id")
    checked: list[tuple[RowReport, dict]] = []
    known = existing.unit_ids
    for row_no, record in rows:
        errors: list[str] = []
        unit_id = _value(record, "unit_id")
        report = RowReport(UNITS, row_no, unit_id or "", errors)
        if unit_id is None:
            errors.append("unit_id: required, but empty")
        elif not ID_RE.fullmatch(unit_id):
            errors.append(f"unit_id: {_quote(unit_id)} is not a valid id ({ID_RULE})")
        else:
            if unit_id in known:
                errors.append(f"unit_id: {_quote(unit_id)} already exists")
            duplicates.see(unit_id, unit_id, report)
        normal = {"unit_id": unit_id}
        for column in ("building", "unit", "room"):
            value = _value(record, column)
            if value is None:
                errors.append(f"{column}: required, but empty")
            elif len(value) > MAX_UNIT_PART:
                errors.append(f"{column}: {_quote(value)} is longer than {MAX_UNIT_PART} characters")
            normal[column] = value
        area = _value(record, "floor_area_m2")
        if area is not None:
            if not AREA_RE.fullmatch(area):
                errors.append(f"floor_area_m2: {_quote(area)} is not a number of square metres "
                              "with at most 2 decimals, e.g. 89.50")
            elif Decimal(area) <= 0:
                errors.append(f"floor_area_m2: {_quote(area)} must be greater than 0")
            else:
                area = str(Decimal(area))                             # drops leading zeros only
        normal["floor_area_m2"] = area
        checked.append((report, normal))
        plan.report.append(report)
        ticker.tick()
    duplicates.finish()
    plan.units.extend(normal for report, normal in checked if not report.errors)
    return {unit_id: report for unit_id, (report, _shown) in duplicates.first.items()}


def _plan_people(rows: Table, existing: Existing, times: _Times, units_in_file: dict[str, RowReport],
                 plan: ImportPlan, ticker: _Progress) -> None:
    person_duplicates = _Duplicates("person_id")
    card_duplicates = _Duplicates("card_numbers")
    pin_duplicates = _Duplicates("pin")
    known_people, known_units = existing.person_ids, existing.unit_ids
    groups_known, pins_used = existing.group_ids, existing.pins
    cards_active = {c.upper() for c in existing.card_numbers}         # hex: "0a1b" is the card "0A1B"
    kinds = ", ".join(PERSON_KINDS)
    checked: list[tuple[RowReport, dict]] = []
    for row_no, record in rows:
        errors: list[str] = []
        person_id = _value(record, "person_id")
        report = RowReport(PEOPLE, row_no, person_id or "", errors)

        if person_id is None:
            errors.append("person_id: required, but empty")
        elif not ID_RE.fullmatch(person_id):
            errors.append(f"person_id: {_quote(person_id)} is not a valid id ({ID_RULE})")
        else:
            if person_id in known_people:
                errors.append(f"person_id: {_quote(person_id)} already exists")
            person_duplicates.see(person_id, person_id, report)

        name = _value(record, "name")
        if name is None:
            errors.append("name: required, but empty")
        elif len(name) > MAX_NAME:
            errors.append(f"name: {_quote(name)} is longer than {MAX_NAME} characters")

        kind = _value(record, "kind")
        if kind is None:
            errors.append("kind: required, but empty")
        elif kind.lower() in PERSON_KINDS:
            kind = kind.lower()
        else:
            errors.append(f"kind: {_quote(kind)} is not one of {kinds}")
            kind = None

        role = _value(record, "role")
        if role is not None:
            if len(role) > MAX_ROLE:
                errors.append(f"role: {_quote(role)} is longer than {MAX_ROLE} characters")
            elif kind is not None and kind != "staff":
                errors.append(f"role: {_quote(role)} is for staff only, and this person is a {kind}")

        unit_id = _value(record, "unit_id")
        if unit_id is None:
            if kind == "resident":
                errors.append("unit_id: required for residents, but empty")
        elif unit_id not in known_units:
            unit_report = units_in_file.get(unit_id)
            if unit_report is None:
                errors.append(f"unit_id: {_quote(unit_id)} is not a known unit")
            elif unit_report.errors:
                errors.append(f"unit_id: {_quote(unit_id)} is not imported (row {unit_report.row} has errors)")

        phone = _value(record, "phone")
        if phone is not None and not PHONE_RE.fullmatch(phone):
            errors.append(f"phone: {_quote(phone)} is not a phone number (6 to 20 digits, may start with +)")

        cards: list[str] = []
        card_keys: set[str] = set()
        for card in _split(_value(record, "card_numbers")):
            if not CARD_RE.fullmatch(card):
                errors.append(f"card_numbers: {_quote(card)} is not a card number (4 to 32 hex digits)")
                continue
            key = card.upper()
            if key in card_keys:
                continue                                              # listed twice in the same row
            card_keys.add(key)
            cards.append(key)                                         # stored as rules.card_key spells it
            if key in cards_active:
                errors.append(f"card_numbers: {_quote(card)} is already issued to another person")
            card_duplicates.see(key, card, report)

        pin = _value(record, "pin")
        if pin is not None:
            if not PIN_RE.fullmatch(pin):
                errors.append(f"pin: {_quote(pin)} is not a PIN (4 to 8 digits)")
            else:
                if pin in pins_used:
                    errors.append(f"pin: {_quote(pin)} is already in use at this site")
                pin_duplicates.see(pin, pin, report)

        groups: list[str] = []
        for group in _split(_value(record, "groups")):
            if group in groups:
                continue
            groups.append(group)
            if group not in groups_known:
                errors.append(f"groups: {_quote(group)} is not a known access group")

        window = {}
        for column in ("valid_from", "valid_until"):
            text = _value(record, column)
            window[column] = None
            if text is not None:
                parsed, problem = times.parse(text)
                if problem:
                    errors.append(f"{column}: {_quote(text)} {problem}")
                window[column] = parsed
        start, end = window["valid_from"], window["valid_until"]
        if start is not None and end is not None and end <= start:
            errors.append(f"valid_until: {_quote(_value(record, 'valid_until'))} must be after "
                          f"valid_from {_quote(_value(record, 'valid_from'))}")

        checked.append((report, {
            "person_id": person_id, "name": name, "kind": kind, "role": role, "unit_id": unit_id,
            "phone": phone, "card_numbers": cards, "pin": pin, "groups": groups,
            "valid_from": start, "valid_until": end,
        }))
        plan.report.append(report)
        ticker.tick()
    for duplicates in (person_duplicates, card_duplicates, pin_duplicates):
        duplicates.finish()
    plan.people.extend(normal for report, normal in checked if not report.errors)
