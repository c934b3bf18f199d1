"""The console's notify endpoints: inboxes, messages and dead letters, the recipient directory,
preferences and quiet hours. Thin: the notify service decides."""
from __future__ import annotations

from functools import partial

from nameko.events import BROADCAST, event_handler
from nameko.rpc import RpcProxy
from nameko.web.handlers import http

from services.console import web
from services.console.health import HealthBoard
from services.console.web import BadRequest, _bool_arg, _int_arg, body

answer = partial(web.answer, service="notify")


def _board() -> HealthBoard:
    from services.console.service import BOARD
    return BOARD


class NotifyApi:
    notify = RpcProxy("notify")

    @event_handler("notify", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_notify_heartbeat(self, payload):
        _board().beat("notify", payload)

    # -- inbox -------------------------------------------------------------------------------------

    @http("GET", "/api/notify/inbox/<recipient_id>")
    def notify_inbox(self, request, recipient_id):
        return answer(lambda: self.notify.inbox(recipient_id, _bool_arg(request, "unread"),
                                                _int_arg(request, "limit", 50, 1, 500)))

    @http("POST", "/api/notify/inbox/<recipient_id>/<message_id>/read")
    def notify_mark_read(self, request, recipient_id, message_id):
        if message_id == "all":
            return answer(lambda: self.notify.mark_all_read(recipient_id))
        return answer(lambda: self.notify.mark_read(recipient_id, message_id))

    # -- messages, dead letters ------------------------------------------------------------------------

    @http("GET", "/api/notify/messages")
    def notify_messages(self, request):
        return answer(lambda: self.notify.list_messages(
            request.args.get("status") or None, request.args.get("channel") or None,
            request.args.get("recipient_id") or None, request.args.get("event_id") or None,
            _int_arg(request, "limit", 100, 1, 1000)))

    @http("GET", "/api/notify/messages/<message_id>")
    def notify_message(self, request, message_id):
        return answer(lambda: self.notify.message(message_id))

    @http("POST", "/api/notify/messages/<message_id>/retry")
    def notify_retry(self, request, message_id):
        return answer(lambda: self.notify.retry(message_id))

    @http("GET", "/api/notify/status")
    def notify_status(self, request):
        return answer(lambda: self.notify.status())

    @http("POST", "/api/notify/sms/reports")
    def notify_sms_report(self, request):
        """An SMS provider's delivery receipt: {message_id (our reference), status, answer}."""
        return answer(lambda: self.notify.delivery_report(**body(request, ("message_id", "status"), ("answer",))))

    # -- recipients ----------------------------------------------------------------------------------

    @http("POST", "/api/notify/recipients")
    def notify_upsert_recipients(self, request):
        """One recipient (an object) or many ({"recipients": [...]}); all or none."""
        def call():
            data = body(request, (), ("recipients",) + RECIPIENT_FIELDS)
            if "recipients" in data:
                if len(data) > 1:
                    raise BadRequest("give either {\"recipients\": [...]} or one recipient's fields")
                return self.notify.upsert_recipients(data["recipients"])
            return self.notify.upsert_recipients([data])
        return answer(call, 201)

    @http("GET", "/api/notify/recipients")
    def notify_recipients(self, request):
        return answer(lambda: self.notify.list_recipients(
            request.args.get("site_id") or None, request.args.get("unit_id") or None,
            request.args.get("role") or None, _int_arg(request, "limit", 500, 1, 5000)))

    @http("GET", "/api/notify/recipients/<recipient_id>")
    def notify_recipient(self, request, recipient_id):
        return answer(lambda: self.notify.recipient(recipient_id))

    @http("GET", "/api/notify/recipients/<recipient_id>/preferences")
    def notify_preferences(self, request, recipient_id):
        return answer(lambda: self.notify.preferences(recipient_id))

    @http("POST", "/api/notify/recipients/<recipient_id>/preferences")
    def notify_set_preferences(self, request, recipient_id):
        return answer(lambda: self.notify.set_preferences(
            recipient_id, body(request, ("preferences",))["preferences"]))

    @http("POST", "/api/notify/recipients/<recipient_id>/quiet-hours")
    def notify_quiet_hours(self, request, recipient_id):
        """{"start": "22:00", "end": "07:00"} in the recipient's local time; {} removes them."""
        return answer(lambda: self.notify.set_quiet_hours(recipient_id, **body(request, (), ("start", "end"))))


RECIPIENT_FIELDS = ("recipient_id", "site_id", "name", "kind", "unit_id", "roles", "language", "timezone", "email",
                    "phone", "webhook_url", "webhook_secret", "quiet_start", "quiet_end", "active")
