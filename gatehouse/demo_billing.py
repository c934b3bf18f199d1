"""The demo estate's billing part (called by gatehouse.demo.seed; idempotent).

Three households billed for the last three months: 1-1-101 has paid everything, 1-1-102
(with a monthly parking pass) has paid part, 2-1-301 has paid nothing and owes late fees.
"""
from __future__ import annotations

SITE = "demo"
ACCOUNTS = [  # unit, building, floor, area, payer, phone
    ("1-1-101", "1", "1", "89.50", "Li Wei", "13800000101"),
    ("1-1-102", "1", "1", "120.00", "Zhang Min", "13800000102"),
    ("2-1-301", "2", "3", "76.25", "Chen Hua", "13800000301"),
]


def _months_back(now, n):
    y, m = now.year, now.month
    out = []
    for _ in range(n):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
        out.append(f"{y:04d}-{m:02d}")
    return list(reversed(out))


def _yuan(fen):
    return f"{fen // 100}.{fen % 100:02d}"


def seed(rpc, now):
    """Yield one printable line per thing seeded."""
    b = rpc.billing
    b.set_site(SITE, "Gatehouse Demo Estate", late_fee_rate="0.0005", late_fee_grace_days=0, late_fee_cap="0.3",
               due_days=15, dunning_days=[7, 30, 60])
    b.set_fee_item(SITE, "mgmt", "Property management 物业费", "area")
    b.set_rate(SITE, "mgmt", "2.50")
    b.set_rate(SITE, "mgmt", "2.80", "building", "2")
    b.set_fee_item(SITE, "rubbish", "Rubbish collection 垃圾清运", "fixed")
    b.set_rate(SITE, "rubbish", "10.00")
    b.set_fee_item(SITE, "pass", "Monthly parking pass 月卡", "pass")
    b.set_fee_item(SITE, "repair", "Repairs 维修", "one_off")
    ids = {}
    for unit, building, floor, area, payer, phone in ACCOUNTS:
        ids[unit] = b.set_account(SITE, unit, building, floor, area, payer, "residential",
                                  [{"name": payer, "phone": phone}])["account_id"]
    b.set_pass(ids["1-1-102"], "pass", "300.00", 1)
    yield ("  billing: management 2.50 CNY/m2/month (building 2: 2.80), rubbish 10.00/month, "
           "1-1-102 parking pass 300.00/month; late fee 0.05 %/day from the due date (15th), cap 30 %")
    periods = _months_back(now, 3)
    for period in periods:
        state = b.start_run(SITE, period, "monthly", False)
        while state["status"] != "done":
            state = b.run_step(state["run_id"], 5)
    yield f"  billing runs {', '.join(periods)}: {len(ACCOUNTS)} accounts each"

    def owed(unit):
        return [i for i in b.list_invoices(SITE, ids[unit], None, None, 200) if i["period"] in periods]
    paid_all = sum(i["total_fen"] for i in owed("1-1-101"))
    r1 = b.pay(ids["1-1-101"], f"demo-{periods[0]}-1-1-101", "bank", None, "CNY", None, "demo", "BANK-DEMO-1",
               paid_all)
    part = owed("1-1-102")[0]["total_fen"] + 20000
    r2 = b.pay(ids["1-1-102"], f"demo-{periods[0]}-1-1-102", "cash", None, "CNY", None, "counter", "", part)
    late = b.accrue_late_fees(SITE, now.date().isoformat())
    b.run_dunning(SITE, now.date().isoformat())
    yield (f"  1-1-101 Li Wei paid {_yuan(paid_all)} by bank (receipt {r1['receipt_number']}): all paid; "
           f"1-1-102 Zhang Min paid {_yuan(part)} cash (receipt {r2['receipt_number']}): part-paid")
    acct = b.account(ids["2-1-301"])
    yield (f"  2-1-301 Chen Hua has paid nothing: owes {_yuan(acct['receivable_fen'])} incl. late fees "
           f"(today's late-fee job charged {_yuan(late['charged_fen'])} across the estate); "
           f"`gatehouse billing arrears --site demo` shows who owes what since when")
    yield (f"  receipts: http://<console>/api/billing/receipts/{r1['receipt_number']}.html (.pdf); "
           f"online payments via the fake provider on :8030")
