"""Notify's rules as plain functions: routing, channels, quiet hours with the critical bypass,
digest times, backoff, money; and the templates in both languages."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify import rules, templates
from services.notify.channels import sign, verify

SH = "Asia/Shanghai"
PERSON = {"recipient_id": "p", "email": "p@x.cn", "phone": "+8613800000000", "timezone": SH,
          "quiet_start": "22:00", "quiet_end": "07:00"}


def at_local(hh, mm, day=27):
    """A UTC time for hh:mm in Shanghai (UTC+8)."""
    return datetime(2026, 11, day, hh, mm, tzinfo=UTC) - timedelta(hours=8)


def test_routes_name_the_audience_and_priority():
    assert rules.route("access.alarm_raised", {"kind": "door_forced"}) == rules.Route(
        "alarm", "critical", ("roles", ("security",)))
    assert rules.route("access.alarm_raised", {"kind": "device_fault"}).audience == (
        "roles", ("security", "maintenance"))
    assert rules.route("access.alarm_raised", {"kind": "antipassback_violation"}).priority == "low"
    assert rules.route("access.alarm_cleared", {"kind": "device_offline"}).priority == "low"
    assert rules.route("patrol.round_missed", {"supervisor_role": None}) == rules.Route(
        "patrol", "critical", ("roles", ("patrol_supervisor",)))
    assert rules.route("access.visitor_arrived", {"host_person_id": "", "host_unit_id": "1-1-101"}).audience == (
        "unit", "1-1-101")
    assert rules.route("parking.payment_awaited", {}).audience == ("roles", ("cashier",))
    assert rules.route("billing.dunning_due", {"unit_id": "u"}).audience == ("unit", "u")
    assert rules.route("parking.session_closed", {}) is None


def test_channels_follow_defaults_preferences_and_addresses():
    assert rules.channels_for(PERSON, "billing", "normal", {}) == ["inbox", "email"]          # SMS off for bills
    assert rules.channels_for(PERSON, "alarm", "normal", {}) == ["inbox", "email", "sms"]
    assert rules.channels_for({**PERSON, "phone": None}, "alarm", "normal", {}) == ["inbox", "email"]
    off = {("alarm", "inbox"): False, ("alarm", "email"): False, ("billing", "sms"): True}
    assert rules.channels_for(PERSON, "alarm", "normal", off) == ["sms"]
    assert rules.channels_for(PERSON, "alarm", "critical", off) == ["inbox", "sms"]            # inbox forced
    assert rules.channels_for(PERSON, "billing", "normal", off) == ["inbox", "email", "sms"]


def test_quiet_hours_across_midnight_and_the_critical_bypass():
    end = at_local(7, 0, day=28)
    assert rules.quiet_until(at_local(23, 30), SH, "22:00", "07:00") == end
    assert rules.quiet_until(at_local(22, 0), SH, "22:00", "07:00") == end
    assert rules.quiet_until(at_local(6, 59, day=28), SH, "22:00", "07:00") == end
    assert rules.quiet_until(at_local(7, 0, day=28), SH, "22:00", "07:00") is None
    assert rules.quiet_until(at_local(12, 0), SH, "22:00", "07:00") is None
    assert rules.quiet_until(at_local(13, 0), SH, "12:00", "14:00") == at_local(14, 0)       # same-day window
    assert rules.quiet_until(at_local(13, 0), SH, None, None) is None
    night = at_local(23, 30)
    assert rules.due_at(night, "email", "normal", PERSON, 8) == ("queued", end)
    assert rules.due_at(night, "sms", "critical", PERSON, 8) == ("queued", night)              # door forced
    assert rules.due_at(night, "inbox", "normal", PERSON, 8) == ("delivered", night)
    assert rules.due_at(night, "webhook", "normal", PERSON, 8) == ("queued", night)
    assert rules.due_at(night, "email", "low", PERSON, 8) == ("held", at_local(8, 0, day=28))
    assert rules.due_at(at_local(7, 59), "sms", "low", PERSON, 8) == ("held", at_local(8, 0))
    with pytest.raises(ValueError, match="HH:MM"):
        rules.quiet_until(night, SH, "25:00", "07:00")


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       st.sampled_from(["22:00", "00:00", "12:30", "23:59"]), st.sampled_from(["07:00", "00:01", "12:30", "06:15"]))
def test_a_quiet_window_always_ends_after_now_and_within_a_day(now, start, end):
    until = rules.quiet_until(now, SH, start, end)
    if until is not None:
        assert now < until <= now + timedelta(days=1)
        assert rules.quiet_until(until, SH, start, end) is None


@given(st.integers(min_value=1, max_value=500))
def test_backoff_grows_and_is_capped(attempts):
    delay = rules.retry_delay(attempts, 5, 2, 300)
    assert 5 <= delay <= 300
    assert rules.retry_delay(attempts + 1, 5, 2, 300) >= delay
    assert [rules.retry_delay(n, 5, 2, 300) for n in (1, 2, 3, 7, 8)] == [5, 10, 20, 300, 300]


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_yuan_is_exact(fen):
    text = rules.yuan(fen).replace(",", "")
    whole, cents = text.lstrip("-").split(".")
    assert (int(whole) * 100 + int(cents)) * (-1 if text.startswith("-") else 1) == fen
    assert len(cents) == 2


def test_addresses_are_checked():
    assert rules.address_problem("email", {"email": "a@b.cn"}) is None
    assert rules.address_problem("email", {"email": "a@@b"}) == "malformed email address 'a@@b'"
    assert rules.address_problem("sms", {"phone": "+86 138-0000-0000"}) is None
    assert "malformed phone" in rules.address_problem("sms", {"phone": "call me"})
    assert "without a secret" in rules.address_problem("webhook", {"webhook_url": "https://x.cn/h"})


def test_webhook_signatures_verify_and_refuse_tampering_and_old_timestamps():
    body = b'{"a": 1}'
    signature = sign("s3cret", "1700000000", body)
    assert verify("s3cret", "1700000000", body, signature, now=1700000010)
    assert not verify("s3cret", "1700000000", b'{"a": 2}', signature, now=1700000010)
    assert not verify("other", "1700000000", body, signature, now=1700000010)
    assert not verify("s3cret", "1700000000", body, signature, now=1700009999)


EXAMPLES = {
    "access.visitor_arrived": dict(visitor_id="v", pass_id="p", name="Sun Li", host_unit_id="1-1-101",
                                   host_person_id="p-liwei", purpose="visit", gate_id="north",
                                   arrived_at="2026-11-27T02:00:00+00:00"),
    "access.alarm_raised": dict(alarm_id=1, gate_id="g", device_id="d", kind="fire", state="raised",
                                raised_at="2026-11-27T02:00:00+00:00", details={}),
    "access.alarm_cleared": dict(alarm_id=1, gate_id="g", device_id="d", kind="device_offline", state="cleared"),
    "patrol.round_missed": dict(round_id="r", route_id="rt", route_name="North loop", guard_id="g1", assigned_to="Li",
                                planned_start="2026-11-27T02:00:00+00:00", due_by="2026-11-27T03:00:00+00:00",
                                missed_checkpoints=["cp1", "cp2"], kind="missed", supervisor_role="patrol_supervisor"),
    "billing.invoice_issued": dict(invoice_id="i", number="N1", account_id="a", unit_id="u", payer="P",
                                   total_fen=100, currency="CNY", period="2026-11", due_date="2026-12-01"),
    "billing.payment_received": dict(payment_id="p", account_id="a", unit_id="u", payer="P", amount_fen=8950,
                                     currency="CNY", method="cash", receipt_number="R1", receipt_path="/r/R1.pdf",
                                     receipt_url="http://c/r/R1.pdf"),
    "billing.dunning_due": dict(account_id="a", unit_id="u", payer="P", step=2, days_overdue=31,
                                outstanding_fen=100000, currency="CNY", oldest_due_date="2026-10-15"),
    "parking.payment_awaited": dict(lot_id="l", lane_id="out1", session_id="s", plate="苏E12345", due_fen=700,
                                    currency="CNY"),
    "notify.digest": dict(daily=True, items=[{"subject": "a", "created_at": "2026-11-27T02:00:00+00:00"}]),
}


NEEDED = {"access.visitor_arrived": "arrived_at", "access.alarm_raised": "gate_id", "access.alarm_cleared": "device_id",
          "patrol.round_missed": "due_by", "billing.invoice_issued": "due_date", "billing.payment_received": "receipt_url",
          "billing.dunning_due": "outstanding_fen", "parking.payment_awaited": "due_fen", "notify.digest": "items"}


@pytest.mark.parametrize("language", rules.LANGUAGES)
@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_every_event_has_a_template_in_both_languages(event_type, language):
    ctx = {**EXAMPLES[event_type], "site_id": "s1", "recipient_name": "Li", "tz": SH, "console_url": "http://c"}
    subject, body = templates.render(event_type, language, ctx)
    assert subject and body.strip() and "\n" not in subject
    missing = {k: v for k, v in ctx.items() if k != NEEDED[event_type]}
    with pytest.raises(templates.TemplateProblem, match="is undefined"):
        templates.render(event_type, language, missing)


def test_templates_show_money_in_yuan_and_times_in_the_site_zone():
    ctx = {**EXAMPLES["parking.payment_awaited"], "site_id": "s1", "recipient_name": "Li", "tz": SH,
           "console_url": "http://c"}
    assert templates.render("parking.payment_awaited", "en", ctx)[0] == \
        "Exit waiting for payment: 苏E12345 at out1 (CNY 7.00)"
    assert "（7.00 元）" in templates.render("parking.payment_awaited", "zh-CN", ctx)[0]
    ctx = {**EXAMPLES["patrol.round_missed"], "site_id": "s1", "recipient_name": "Li", "tz": SH, "console_url": "c"}
    body = templates.render("patrol.round_missed", "en", ctx)[1]
    assert "planned for 2026-11-27 10:00 was not completed by 2026-11-27 11:00" in body and "cp1, cp2" in body
    with pytest.raises(templates.TemplateProblem, match="no template"):
        templates.render("nothing.here", "en", ctx)


def test_the_import_command_reads_csv_with_roles_and_sends_one_bulk_upsert(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import gatehouse.cli
    from gatehouse.cli_notify import notify
    sent = []
    monkeypatch.setattr(gatehouse.cli, "_console", lambda method, path, body=None, **kw: sent.append(
        (method, path, body)) or {"created": 2})
    path = tmp_path / "people.csv"
    path.write_text("recipient_id,site_id,name,kind,unit_id,roles,language,email,active\n"
                    "p-a,s1,李伟,resident,1-1-101,,zh-CN,a@x.cn,\n"
                    "p-b,s1,Bo,staff,,security;cashier,en,,no\n", encoding="utf-8")
    result = CliRunner().invoke(notify, ["import", str(path)])
    assert result.exit_code == 0, result.output
    [(method, url, body)] = sent
    assert (method, url) == ("POST", "/api/notify/recipients")
    assert body["recipients"] == [
        {"recipient_id": "p-a", "site_id": "s1", "name": "李伟", "kind": "resident", "unit_id": "1-1-101",
         "language": "zh-CN", "email": "a@x.cn"},
        {"recipient_id": "p-b", "site_id": "s1", "name": "Bo", "kind": "staff", "roles": ["security", "cashier"],
         "language": "en", "active": False}]
