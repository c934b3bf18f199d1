"""Printable receipts (HTML with Jinja2, PDF with reportlab) and XLSX exports (openpyxl).

Input is what store.receipt / store.export_rows return; nothing here touches the database.
The PDF uses reportlab's built-in STSong-Light CID font, so Chinese names print without
shipping a font file.
"""
from __future__ import annotations

import io
from datetime import datetime
from zoneinfo import ZoneInfo

from jinja2 import Environment, select_autoescape

from services.billing.rules import yuan

_env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_env.filters["yuan"] = yuan

RECEIPT_HTML = _env.from_string("""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Receipt {{ r.receipt_number }}</title>
<style>
 body { font-family: "Noto Sans CJK SC", "PingFang SC", sans-serif; max-width: 40em; margin: 2em auto; }
 table { width: 100%; border-collapse: collapse; } td, th { padding: .3em; border-bottom: 1px solid #ccc; }
 td.amount, th.amount { text-align: right; font-variant-numeric: tabular-nums; }
 @media print { button { display: none; } }
</style></head><body>
<h1>{{ r.site_name }}</h1>
<h2>收据 Receipt {{ r.receipt_number }}</h2>
{% if r.reversed_at %}<p><strong>REVERSED 已冲正: {{ r.reversal_reason }}</strong></p>{% endif %}
<p>Payer 缴款人: <strong>{{ r.payer }}</strong>{% if r.unit_id %} &middot; Unit 房号 {{ r.unit_id }}{% endif %}<br>
Received 收款时间: {{ received }} &middot; Method 方式: {{ r.method }}{% if r.reference %}
 &middot; Ref {{ r.reference }}{% endif %}</p>
<table><tr><th>Item 项目</th><th class="amount">Amount 金额 ({{ r.currency }})</th></tr>
{% for item in r["items"] %}<tr><td>{{ item.text }}</td><td class="amount">{{ item.amount_fen | yuan }}</td></tr>
{% endfor %}<tr><th>Total 合计</th><th class="amount">{{ r.amount_fen | yuan }}</th></tr></table>
<p>Operator 收款人: {{ r.operator }}</p>
<button onclick="window.print()">Print</button>
</body></html>
""")


def _local(iso: str, tz: str) -> str:
    return datetime.fromisoformat(iso).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def receipt_html(r: dict, timezone: str = "Asia/Shanghai") -> str:
    return RECEIPT_HTML.render(r=r, received=_local(r["received_at"], timezone))


def receipt_pdf(r: dict, timezone: str = "Asia/Shanghai") -> bytes:
    from reportlab.lib.pagesizes import A5
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    if "STSong-Light" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A5)
    c.setTitle(f"Receipt {r['receipt_number']}")
    width, height = A5
    y = height - 50

    def text(s, size=10, x=40, right=False):
        c.setFont("STSong-Light", size)
        (c.drawRightString if right else c.drawString)(x, y, s)

    text(r["site_name"], 16)
    y -= 24
    text(f"收据 Receipt {r['receipt_number']}" + ("   REVERSED 已冲正" if r.get("reversed_at") else ""), 12)
    y -= 20
    text(f"Payer 缴款人: {r['payer']}" + (f"   Unit 房号: {r['unit_id']}" if r.get("unit_id") else ""))
    y -= 14
    text(f"Received 收款时间: {_local(r['received_at'], timezone)}   Method 方式: {r['method']}")
    y -= 24
    for item in r["items"]:
        text(item["text"][:60], 9)
        text(yuan(item["amount_fen"]), 9, width - 40, right=True)
        y -= 14
    c.line(40, y + 8, width - 40, y + 8)
    y -= 4
    text(f"Total 合计 ({r['currency']})", 11)
    text(yuan(r["amount_fen"]), 11, width - 40, right=True)
    y -= 24
    text(f"Operator 收款人: {r['operator']}", 9)
    c.showPage()
    c.save()
    return buf.getvalue()


def xlsx(title: str, head: list[str], rows: list[list]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title[:31])
    ws.append(head)
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
