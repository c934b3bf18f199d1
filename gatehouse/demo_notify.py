"""The demo estate's notify part (called by gatehouse.demo.seed; idempotent): notify's own
directory of the demo people, with languages, addresses, roles and one resident's quiet hours.
The forced garage door of `make run` then reaches Wang Fang (security) in her inbox, by mail
(var/mail) and by SMS (the fake provider); a visitor arriving reaches Li Wei, the host."""
from __future__ import annotations

from gatehouse import settings

SITE = "demo"
RECIPIENTS = [
    {"recipient_id": "p-liwei", "site_id": SITE, "name": "李伟", "kind": "resident", "unit_id": "1-1-101",
     "language": "zh-CN", "email": "liwei@demo.local", "phone": "+8613800000101"},
    {"recipient_id": "p-zhangmin", "site_id": SITE, "name": "Zhang Min", "kind": "resident", "unit_id": "1-1-102",
     "language": "en", "email": "zhangmin@demo.local", "quiet_start": "22:00", "quiet_end": "07:00"},
    {"recipient_id": "p-chenhua", "site_id": SITE, "name": "陈华", "kind": "resident", "unit_id": "2-1-301",
     "language": "zh-CN", "email": "chenhua@demo.local"},
    {"recipient_id": "p-wangfang", "site_id": SITE, "name": "王芳", "kind": "staff", "language": "zh-CN",
     "roles": ["security", "patrol_supervisor", "cashier"], "email": "wangfang@demo.local",
     "phone": "+8613800000201"},
    {"recipient_id": "p-zhaolei", "site_id": SITE, "name": "Zhao Lei", "kind": "staff", "language": "en",
     "roles": ["maintenance"], "email": "zhaolei@demo.local",
     # the maintenance desk's ticket system takes device alarms by webhook (the fake provider checks the signature)
     "webhook_url": "http://127.0.0.1:8025/hooks/maintenance-desk", "webhook_secret": "demo-webhook-secret"},
]


def seed(rpc, now):
    """Yield one printable line per thing seeded."""
    result = rpc.notify.upsert_recipients(RECIPIENTS)
    console = f"http://{settings.console_address()}"
    yield (f"  notify: {len(RECIPIENTS)} recipients ({result['created']} new): Li Wei, Zhang Min, Chen Hua (residents), "
           "Wang Fang (security, patrol supervisor, cashier), Zhao Lei (maintenance, webhook)")
    if result.get("replayed"):
        yield f"  notify: {result['replayed']} messages of events that came before the directory (bills, reminders)"
    yield "  notify: Zhang Min has quiet hours 22:00-07:00 (mail waits; a forced door would not)"
    yield f"  notify: inboxes at {console}/api/notify/inbox/p-wangfang  (and p-liwei, p-zhangmin, p-zhaolei)"
    yield (f"  notify: mail in {settings.var_dir() / 'mail'} (`gatehouse notify mail --body`), "
           "SMS and webhooks at http://127.0.0.1:8025/requests, dead letters: `gatehouse notify messages --status dead`")
