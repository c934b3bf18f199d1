"""Patrol reports as files: CSV (UTF-8 with a BOM, so spreadsheet programs read Chinese names)
and XLSX (openpyxl). The figures come from services.patrol.store.report."""
from __future__ import annotations

import csv
import io

COLUMNS = ("rounds", "complete", "on_time", "incomplete", "missed", "completion_rate", "on_time_rate",
           "checkpoints_due", "checkpoints_missed", "missed_checkpoints")
FORMATS = ("csv", "xlsx")


def _rows(report: dict) -> tuple[list[str], list[list]]:
    key = report["by"]
    header = [key, "name", *COLUMNS]
    rows = [[r[key], r["name"], *[" ".join(r[c]) if isinstance(r[c], list) else r[c] for c in COLUMNS]]
            for r in report["rows"]]
    return header, rows


def to_csv(report: dict) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"patrol report {report['site_id']}", report["since"], report["until"]])
    header, rows = _rows(report)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def to_xlsx(report: dict) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    sheet.title = f"by {report['by']}"
    sheet.append([f"Patrol report, site {report['site_id']}", f"from {report['since']}", f"until {report['until']}"])
    header, rows = _rows(report)
    sheet.append(header)
    for cell in sheet[2]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append(row)
    for column in ("H", "I"):      # completion and on-time rates as percentages
        for cell in sheet[column][2:]:
            cell.number_format = "0.0%"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def export(report: dict, fmt: str) -> bytes:
    from gatehouse.records import InvalidInput
    if fmt == "csv":
        return to_csv(report)
    if fmt == "xlsx":
        return to_xlsx(report)
    raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
