"""Bulk import of units and people: real CSV and XLSX bytes in, per-row report out."""
from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import openpyxl
import pytest

from services.access.importing import Existing, ImportFileError, plan_import, read_table

UNIT_HEADER = ["unit_id", "building", "unit", "room", "floor_area_m2"]
PEOPLE_HEADER = ["person_id", "name", "kind", "role", "unit_id", "phone", "card_numbers", "pin", "groups",
                 "valid_from", "valid_until"]
EXISTING = Existing(
    timezone="Asia/Shanghai",
    person_ids=frozenset({"old-1"}),
    unit_ids=frozenset({"1-1-101"}),
    card_numbers=frozenset({"10001", "00ABCDEF"}),
    pins=frozenset({"9999"}),
    group_ids=frozenset({"residents", "cleaners"}),
)


def csv_bytes(rows, encoding="utf-8", bom=False) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode(encoding)


def xlsx_bytes(sheets: dict[str, list[list]]) -> bytes:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def person(person_id="p1", name="Ann", kind="resident", role="", unit_id="1-1-101", phone="", cards="", pin="",
           groups="", valid_from="", valid_until=""):
    return [person_id, name, kind, role, unit_id, phone, cards, pin, groups, valid_from, valid_until]


def plan_people(*rows, units=(), existing=EXISTING):
    tables = read_table("people.csv", csv_bytes([PEOPLE_HEADER, *rows]), "people")
    if units:
        tables["units"] = read_table("units.csv", csv_bytes([UNIT_HEADER, *units]), "units")["units"]
    return plan_import(tables, existing)


def errors_of(plan, row):
    [report] = [r for r in plan.report if r.row == row]
    return report.errors


# -- good files ---------------------------------------------------------------------------------

def test_good_csv_files_are_all_valid_and_normalized():
    units = read_table("units.csv", csv_bytes([
        UNIT_HEADER,
        ["3-2-1201", "3", "2", "1201", "89.50"],
        ["3-2-1202", "3", "2", "1202", ""],
    ]), "units")
    people = read_table("people.csv", csv_bytes([
        PEOPLE_HEADER,
        person("p1", "张三", "resident", unit_id="3-2-1201", phone="+8613800138000", cards="10002; 0a0b0c,",
               pin="0123", groups="residents", valid_from="2026-01-01T00:00:00+08:00",
               valid_until="2026-12-31 23:59"),
        person("p2", "Bob", "Staff", role="guard", unit_id="", cards="10003"),
        person("p3", "Carl", "contractor", unit_id="1-1-101", groups="cleaners;residents"),
    ]), "people")
    assert units["people"] == [] and people["units"] == []
    plan = plan_import({"units": units["units"], "people": people["people"]}, EXISTING)

    assert plan.error_count == 0 and plan.row_count == 5
    assert [r.ok for r in plan.report] == [True] * 5
    assert [(r.sheet, r.row, r.key) for r in plan.report] == [
        ("units", 2, "3-2-1201"), ("units", 3, "3-2-1202"),
        ("people", 2, "p1"), ("people", 3, "p2"), ("people", 4, "p3")]
    assert plan.units == [
        {"unit_id": "3-2-1201", "building": "3", "unit": "2", "room": "1201", "floor_area_m2": "89.50"},
        {"unit_id": "3-2-1202", "building": "3", "unit": "2", "room": "1202", "floor_area_m2": None},
    ]
    ann, bob, carl = plan.people
    shanghai = timedelta(hours=8)
    assert ann == {
        "person_id": "p1", "name": "张三", "kind": "resident", "role": None, "unit_id": "3-2-1201",
        "phone": "+8613800138000", "card_numbers": ["10002", "0A0B0C"], "pin": "0123", "groups": ["residents"],
        "valid_from": datetime(2025, 12, 31, 16, 0, tzinfo=UTC),
        "valid_until": datetime(2026, 12, 31, 15, 59, tzinfo=UTC),
    }
    assert ann["valid_from"].utcoffset() == shanghai and ann["valid_until"].utcoffset() == shanghai
    assert bob["kind"] == "staff" and bob["role"] == "guard" and bob["unit_id"] is None
    assert bob["pin"] is None and bob["valid_from"] is None and bob["groups"] == []
    assert carl["groups"] == ["cleaners", "residents"]
    summary = plan.summary()
    assert json.loads(json.dumps(summary)) == {"rows": 5, "valid": 5, "errors": 0, "errors_by_row": []}


def test_blank_rows_are_skipped_and_rows_keep_their_spreadsheet_numbers():
    data = csv_bytes([PEOPLE_HEADER, person("p1"), [""] * 11, [], person("p2", phone="12")])
    plan = plan_import(read_table("p.csv", data, "people"), EXISTING)
    assert [(r.row, r.key, r.ok) for r in plan.report] == [(2, "p1", True), (5, "p2", False)]


def test_header_names_are_case_insensitive_trimmed_and_spaces_become_underscores():
    header = [" Person ID ", "NAME", "Kind", "Unit Id", "Card  Numbers"]
    tables = read_table("p.csv", csv_bytes([header, ["p1", "Ann", "resident", "1-1-101", "10002"]]), "people")
    assert tables["people"] == [(2, {"person_id": "p1", "name": "Ann", "kind": "resident",
                                     "unit_id": "1-1-101", "card_numbers": "10002"})]
    assert plan_import(tables, EXISTING).error_count == 0


def test_csv_kind_is_told_from_the_header_when_not_given():
    tables = read_table("x.csv", csv_bytes([UNIT_HEADER, ["u1", "1", "1", "101", ""]]))
    assert [row for row, _ in tables["units"]] == [2] and tables["people"] == []


# -- errors, row by row -------------------------------------------------------------------------

@pytest.mark.parametrize(("row", "message"), [
    (person(person_id=""), 'person_id: required, but empty'),
    (person(name=""), 'name: required, but empty'),
    (person(kind=""), 'kind: required, but empty'),
    (person(person_id="a b"), 'person_id: "a b" is not a valid id'),
    (person(person_id="-p"), 'person_id: "-p" is not a valid id'),
    (person(name="x" * 201), "name: \"" + "x" * 80 + "…\" is longer than 200 characters"),
    (person(kind="owner"), 'kind: "owner" is not one of resident, staff, contractor'),
    (person(role="guard"), 'role: "guard" is for staff only, and this person is a resident'),
    (person(unit_id=""), "unit_id: required for residents, but empty"),
    (person(unit_id="9-9-999"), 'unit_id: "9-9-999" is not a known unit'),
    (person(kind="staff", unit_id="9-9-999"), 'unit_id: "9-9-999" is not a known unit'),
    (person(phone="12345"), 'phone: "12345" is not a phone number'),
    (person(phone="138-0013-8000"), 'phone: "138-0013-8000" is not a phone number'),
    (person(cards="10002;xyz1"), 'card_numbers: "xyz1" is not a card number (4 to 32 hex digits)'),
    (person(cards="123"), 'card_numbers: "123" is not a card number'),
    (person(cards="10002,10001"), 'card_numbers: "10001" is already issued to another person'),
    (person(cards="00abcdef"), 'card_numbers: "00abcdef" is already issued to another person'),
    (person(pin="123"), 'pin: "123" is not a PIN (4 to 8 digits)'),
    (person(pin="12a4"), 'pin: "12a4" is not a PIN'),
    (person(pin="9999"), 'pin: "9999" is already in use at this site'),
    (person(groups="residents;gym"), 'groups: "gym" is not a known access group'),
    (person(valid_from="tomorrow"), 'valid_from: "tomorrow" is not a valid time'),
    (person(valid_from="2026-02-30 08:00"), 'valid_from: "2026-02-30 08:00" is not a valid time'),
    (person(valid_until="2026-12-31"), 'valid_until: "2026-12-31" needs a time of day too'),
    (person(valid_from="2026-06-01 08:00", valid_until="2026-06-01T00:00:00Z"),
     'valid_until: "2026-06-01T00:00:00Z" must be after valid_from "2026-06-01 08:00"'),
    (person(valid_from="2026-06-01 08:00", valid_until="2026-06-01 08:00"),
     'valid_until: "2026-06-01 08:00" must be after valid_from "2026-06-01 08:00"'),
    (person(person_id="old-1"), 'person_id: "old-1" already exists'),
])
def test_a_bad_people_row_is_reported_with_column_and_value(row, message):
    plan = plan_people(person("ok", cards="20001", pin="5555"), row)
    assert errors_of(plan, 2) == []
    errors = errors_of(plan, 3)
    assert any(e.startswith(message) for e in errors), errors
    assert [p["person_id"] for p in plan.people] == ["ok"]
    assert plan.error_count == 1
    assert plan.summary()["errors_by_row"] == [{"sheet": "people", "row": 3, "key": row[0], "errors": errors}]


@pytest.mark.parametrize(("row", "message"), [
    (["", "3", "2", "1201", ""], "unit_id: required, but empty"),
    (["3 2 1201", "3", "2", "1201", ""], 'unit_id: "3 2 1201" is not a valid id'),
    (["1-1-101", "1", "1", "101", ""], 'unit_id: "1-1-101" already exists'),
    (["u2", "", "2", "1201", ""], "building: required, but empty"),
    (["u2", "3", "", "1201", ""], "unit: required, but empty"),
    (["u2", "3", "2", "", ""], "room: required, but empty"),
    (["u2", "3", "2", "1201", "89.555"], 'floor_area_m2: "89.555" is not a number of square metres'),
    (["u2", "3", "2", "1201", "1e2"], 'floor_area_m2: "1e2" is not a number'),
    (["u2", "3", "2", "1201", "0.00"], 'floor_area_m2: "0.00" must be greater than 0'),
    (["u2", "3", "2", "1201", "-5"], 'floor_area_m2: "-5" is not a number'),
])
def test_a_bad_unit_row_is_reported_with_column_and_value(row, message):
    tables = read_table("u.csv", csv_bytes([UNIT_HEADER, ["u1", "3", "2", "1201", "50"], row]), "units")
    plan = plan_import(tables, EXISTING)
    assert errors_of(plan, 2) == []
    assert any(e.startswith(message) for e in errors_of(plan, 3)), errors_of(plan, 3)
    assert [u["unit_id"] for u in plan.units] == ["u1"]


def test_duplicate_card_in_the_file_reports_both_rows_the_later_naming_the_earlier():
    plan = plan_people(person("p1", cards="10002"), person("p2"), person("p3", cards="20003;10002"))
    assert errors_of(plan, 2) == ['card_numbers: "10002" is repeated in row 4']
    assert errors_of(plan, 3) == []
    assert errors_of(plan, 4) == ['card_numbers: "10002" is a duplicate of row 2']
    assert [p["person_id"] for p in plan.people] == ["p2"]


def test_card_numbers_are_compared_without_regard_to_hex_case():
    plan = plan_people(person("p1", cards="0a0b0c"), person("p2", cards="0A0B0C"))
    assert errors_of(plan, 3) == ['card_numbers: "0A0B0C" is a duplicate of row 2']


def test_the_same_card_twice_in_one_row_is_kept_once():
    plan = plan_people(person("p1", cards="10002;10002"))
    assert plan.error_count == 0 and plan.people[0]["card_numbers"] == ["10002"]


def test_duplicate_pin_in_the_file_reports_both_rows():
    plan = plan_people(person("p1", pin="4321"), person("p2", pin="4321"), person("p3", pin="4321"))
    assert errors_of(plan, 2) == ['pin: "4321" is repeated in rows 3, 4']
    assert errors_of(plan, 3) == ['pin: "4321" is a duplicate of row 2']
    assert errors_of(plan, 4) == ['pin: "4321" is a duplicate of row 2']


def test_duplicate_person_id_in_the_file_reports_both_rows():
    plan = plan_people(person("p1"), person("p1", name="Other"))
    assert errors_of(plan, 2) == ['person_id: "p1" is repeated in row 3']
    assert errors_of(plan, 3) == ['person_id: "p1" is a duplicate of row 2']
    assert plan.people == []


def test_duplicate_unit_id_in_the_file_and_people_in_a_failed_unit():
    plan = plan_people(person("p1", unit_id="u1"), person("p2", unit_id="u2"),
                       units=[["u1", "1", "1", "101", ""], ["u1", "1", "1", "102", ""],
                              ["u2", "1", "1", "103", "abc"]])
    units = [r for r in plan.report if r.sheet == "units"]
    assert units[0].errors == ['unit_id: "u1" is repeated in row 3']
    assert units[1].errors == ['unit_id: "u1" is a duplicate of row 2']
    assert errors_of_sheet(plan, "people", 2) == ['unit_id: "u1" is not imported (row 2 has errors)']
    assert errors_of_sheet(plan, "people", 3) == ['unit_id: "u2" is not imported (row 4 has errors)']
    assert plan.units == [] and plan.people == []


def test_people_may_name_units_of_the_same_import():
    plan = plan_people(person("p1", unit_id="u1"), units=[["u1", "1", "1", "101", ""]])
    assert plan.error_count == 0 and plan.people[0]["unit_id"] == "u1"


def errors_of_sheet(plan, sheet, row):
    [report] = [r for r in plan.report if r.sheet == sheet and r.row == row]
    return report.errors


def test_a_row_collects_all_its_errors_and_the_summary_lists_failing_rows_only():
    plan = plan_people(person("p1"), person("p 2", kind="boss", phone="x", pin="1"))
    summary = plan.summary()
    assert summary["rows"] == 2 and summary["valid"] == 1 and summary["errors"] == 1
    [entry] = summary["errors_by_row"]
    assert entry["row"] == 3 and entry["key"] == "p 2" and len(entry["errors"]) == 4
    json.dumps(summary)


# -- time zones -----------------------------------------------------------------------------------

def test_naive_local_times_are_read_in_the_site_zone_from_csv_and_xlsx():
    data = xlsx_bytes({"people": [PEOPLE_HEADER,
                                  person("p1", valid_from=datetime(2026, 3, 1, 8, 30),
                                         valid_until="2026-03-31 18:00")]})
    tables = read_table("p.xlsx", data)
    assert tables["people"][0][1]["valid_from"] == "2026-03-01T08:30:00"
    [ann] = plan_import(tables, EXISTING).people
    assert ann["valid_from"].utcoffset() == timedelta(hours=8)
    assert ann["valid_from"] == datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
    assert ann["valid_until"] == datetime(2026, 3, 31, 10, 0, tzinfo=UTC)


def test_local_times_that_clocks_skip_or_repeat_are_refused():
    new_york = Existing(timezone="America/New_York", unit_ids=frozenset({"1-1-101"}))
    plan = plan_people(person("p1", valid_from="2026-03-08 02:30"),
                       person("p2", valid_from="2026-11-01 01:30"),
                       person("p3", valid_from="2026-11-01 01:30-05:00"), existing=new_york)
    assert errors_of(plan, 2) == ['valid_from: "2026-03-08 02:30" does not exist in America/New_York '
                                  "(clocks change): give a UTC offset"]
    assert errors_of(plan, 3)[0].startswith('valid_from: "2026-11-01 01:30" is ambiguous')
    assert errors_of(plan, 4) == []


def test_unknown_site_time_zone_is_a_caller_error():
    with pytest.raises(ValueError, match="unknown time zone"):
        plan_import({"people": []}, Existing(timezone="Mars/Olympus"))


# -- encodings and XLSX cells ---------------------------------------------------------------------

def test_gb18030_csv_from_chinese_excel():
    data = csv_bytes([PEOPLE_HEADER, person("p1", "王小明", unit_id="1-1-101")], encoding="gb18030")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    plan = plan_import(read_table("住户.csv", data, "people"), EXISTING)
    assert plan.error_count == 0 and plan.people[0]["name"] == "王小明"


def test_utf8_csv_with_bom():
    data = csv_bytes([PEOPLE_HEADER, person("p1", "李雷")], bom=True)
    tables = read_table("p.csv", data, "people")
    assert tables["people"][0][1]["person_id"] == "p1"
    assert plan_import(tables, EXISTING).people[0]["name"] == "李雷"


def test_numeric_pin_and_card_cells_in_xlsx():
    data = xlsx_bytes({"Sheet1": [
        PEOPLE_HEADER,
        person("p1", cards=10002, pin=1234.0, phone=13800138000),
        person("p2", cards="10003", pin="0123"),           # a text cell keeps its leading zero
        person("p3", cards="10004", pin=123),              # a numeric cell lost it: refused, not guessed
    ]})
    tables = read_table("p.xlsx", data, "people")
    values = [row for _, row in tables["people"]]
    assert [(v["pin"], v["card_numbers"], v["phone"]) for v in values] == [
        ("1234", "10002", "13800138000"), ("0123", "10003", None), ("123", "10004", None)]
    plan = plan_import(tables, EXISTING)
    assert [p["pin"] for p in plan.people] == ["1234", "0123"]
    assert errors_of(plan, 4) == ['pin: "123" is not a PIN (4 to 8 digits)']


def test_numeric_floor_area_cell_stays_a_decimal_string():
    data = xlsx_bytes({"units": [UNIT_HEADER, ["u1", 3, 2, 1201, 89.5], ["u2", 3, 2, 1202, 120]]})
    plan = plan_import(read_table("u.xlsx", data), EXISTING)
    assert [(u["room"], u["floor_area_m2"]) for u in plan.units] == [("1201", "89.5"), ("1202", "120")]


def test_both_kinds_in_one_workbook():
    data = xlsx_bytes({
        "说明": [["fill in the two sheets"]],
        "Units": [UNIT_HEADER, ["u1", "1", "1", "101", "75.25"], [], ["u2", "1", "1", "102", None]],
        "PEOPLE": [PEOPLE_HEADER, person("p1", unit_id="u1", cards="10002"),
                   person("p2", kind="resident", unit_id="u2", pin="2468")],
    })
    tables = read_table("site.xlsx", data)
    assert [row for row, _ in tables["units"]] == [2, 4]
    plan = plan_import(tables, EXISTING)
    assert plan.error_count == 0 and plan.row_count == 4
    assert [u["unit_id"] for u in plan.units] == ["u1", "u2"]
    assert [p["unit_id"] for p in plan.people] == ["u1", "u2"]
    assert [r.sheet for r in plan.report] == ["units", "units", "people", "people"]


def test_a_workbook_with_one_named_sheet_and_an_empty_other():
    data = xlsx_bytes({"units": [], "people": [PEOPLE_HEADER, person("p1")]})
    tables = read_table("site.xlsx", data)
    assert tables["units"] == [] and len(tables["people"]) == 1


# -- file-level errors ----------------------------------------------------------------------------

def test_unknown_column_is_a_file_error_naming_it():
    data = csv_bytes([[*PEOPLE_HEADER[:5], "phnoe", "colour"], ["p1", "Ann", "resident", "", "1-1-101", "1", "x"]])
    with pytest.raises(ImportFileError, match=r"unknown column\(s\) for people: 'phnoe' \(did you mean 'phone'\?\), "
                                              r"'colour'"):
        read_table("p.csv", data, "people")


def test_missing_required_column_is_a_file_error():
    data = csv_bytes([["person_id", "name"], ["p1", "Ann"]])
    with pytest.raises(ImportFileError, match="missing required column"):
        read_table("p.csv", data, "people")
    with pytest.raises(ImportFileError, match="missing required column.*room"):
        read_table("u.xlsx", xlsx_bytes({"units": [["unit_id", "building", "unit"], ["u1", "1", "1"]]}))


def test_a_value_under_no_header_is_a_file_error():
    data = csv_bytes([["person_id", "name", "kind"], ["p1", "Ann", "resident", "stray"]])
    with pytest.raises(ImportFileError, match='row 2: a value in column D .4., which has no header: "stray"'):
        read_table("p.csv", data, "people")


@pytest.mark.parametrize("data", [b"", b"  \r\n\r\n", b"\xef\xbb\xbf", csv_bytes([["", ""], []])])
def test_empty_csv_is_a_file_error(data):
    with pytest.raises(ImportFileError, match="empty"):
        read_table("p.csv", data, "people")


def test_header_only_and_empty_workbook_are_file_errors():
    with pytest.raises(ImportFileError, match="no data rows"):
        read_table("p.csv", csv_bytes([PEOPLE_HEADER, []]), "people")
    with pytest.raises(ImportFileError, match="empty"):
        read_table("p.xlsx", xlsx_bytes({"Sheet1": []}), "people")


@pytest.mark.parametrize(("filename", "data"), [
    ("p.xlsx", b"PK\x03\x04 this is not really a zip"),
    ("p.xlsx", b"hello, world"),
    ("p.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500)),
    ("p.csv", bytes(range(256)) * 4),
    ("p.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
])
def test_corrupt_or_wrong_type_is_a_file_error(filename, data):
    with pytest.raises(ImportFileError):
        read_table(filename, data, "people")


def test_a_zip_that_is_not_a_workbook_is_a_file_error():
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ImportFileError, match="not a readable XLSX workbook"):
        read_table("p.xlsx", out.getvalue(), "people")


def test_a_workbook_with_several_unnamed_sheets_needs_names():
    data = xlsx_bytes({"Sheet1": [PEOPLE_HEADER], "Sheet2": [UNIT_HEADER]})
    with pytest.raises(ImportFileError, match="several sheets"):
        read_table("p.xlsx", data, "people")


def test_kind_must_be_units_or_people():
    with pytest.raises(ValueError, match="kind must be"):
        read_table("p.csv", csv_bytes([PEOPLE_HEADER, person()]), "cards")


# -- progress and size ----------------------------------------------------------------------------

def test_progress_is_reported_every_500_rows_and_at_the_end():
    calls = []
    units = [[f"u{i}", "1", "1", str(i), ""] for i in range(300)]
    people = [person(f"p{i}", unit_id=f"u{i % 300}") for i in range(900)]
    tables = {"units": read_table("u.csv", csv_bytes([UNIT_HEADER, *units]), "units")["units"],
              "people": read_table("p.csv", csv_bytes([PEOPLE_HEADER, *people]), "people")["people"]}
    plan = plan_import(tables, EXISTING, progress=lambda done, total: calls.append((done, total)))
    assert plan.error_count == 0
    assert calls == [(500, 1200), (1000, 1200), (1200, 1200)]


def test_progress_on_an_exact_multiple_ends_once_with_total():
    calls = []
    rows = read_table("p.csv", csv_bytes([PEOPLE_HEADER, *[person(f"p{i}") for i in range(1000)]]), "people")
    plan_import(rows, EXISTING, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(500, 1000), (1000, 1000)]


def test_fifty_thousand_people_plan_without_errors():
    existing = Existing(timezone="Asia/Shanghai", unit_ids=frozenset(f"u{i}" for i in range(25_000)),
                        group_ids=frozenset({"residents"}),
                        card_numbers=frozenset(f"{i:08X}" for i in range(50_000)))
    people = [(i + 2, {"person_id": f"p{i}", "name": f"Person {i}", "kind": "resident", "role": None,
                       "unit_id": f"u{i // 2}", "phone": f"138{i:08d}", "card_numbers": f"{0x1000000 + i:X}",
                       "pin": f"{100000 + i}", "groups": "residents", "valid_from": "2026-01-01 08:00",
                       "valid_until": "2027-01-01T00:00:00+08:00"}) for i in range(50_000)]
    plan = plan_import({"people": people}, existing)      # its speed is measured by `make bench`
    assert plan.error_count == 0 and len(plan.people) == 50_000
