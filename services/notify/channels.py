"""Delivery channels behind one interface: `send(message) -> the provider's answer`, or raise

- ChannelDown: the provider cannot be reached at all (connection refused, DNS, no route). The
  message waits and no attempt is counted; the worker pauses the channel and tries again.
- Retryable: the provider was reached but failed (5xx, 4xx SMTP, timeout): counted, retried with
  backoff, a dead letter after the last attempt.
- Permanent: the provider refused this message for good (5xx SMTP recipient, HTTP 4xx).

The inbox is not here: an inbox message is delivered when it is written (store.fan_out).
Plain Python with blocking sockets: these run in the delivery worker (services.notify.deliver),
not under eventlet.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import smtplib
import time
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime

import requests

from services.notify.config import Config


class ChannelDown(Exception):
    pass


class Retryable(Exception):
    pass


class Permanent(Exception):
    pass


class Channel:
    name = ""
    confirms_delivery = False      # a 2xx from a webhook receiver is delivery; SMTP/SMS say "accepted"

    def send(self, message: dict) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- email -------------------------------------------------------------------------------------------

FOOTER = {"en": "Gatehouse notifications. Choose what reaches you, and how: {url}\n",
          "zh-CN": "Gatehouse 消息通知。设置接收哪些通知及方式：{url}\n"}


class SmtpChannel(Channel):
    """SMTP with one connection kept open between messages (the 10,000-mail figure depends on it);
    reconnects once if the server dropped it, and says ChannelDown when it cannot connect."""

    name = "email"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.conn: smtplib.SMTP | None = None
        self.sent_on_conn = 0

    def _connect(self) -> smtplib.SMTP:
        if self.conn is None:
            try:
                conn = smtplib.SMTP(self.cfg.smtp_host, self.cfg.smtp_port, timeout=self.cfg.smtp_timeout_s)
                conn.ehlo_or_helo_if_needed()
            except (OSError, smtplib.SMTPException) as exc:
                raise ChannelDown(f"SMTP {self.cfg.smtp_host}:{self.cfg.smtp_port} unreachable: {exc}") from None
            self.conn, self.sent_on_conn = conn, 0
        return self.conn

    def _mail(self, message: dict) -> bytes:
        """The mail as bytes: UTF-8 text, base64 body, RFC 2047 subject. Built by hand because
        email.message.EmailMessage costs ~1.5 ms a mail here, more than the SMTP exchange."""
        def header(value: str) -> str:
            return value if value.isascii() else Header(value, "utf-8").encode()
        lines = [
            f"From: {self.cfg.smtp_from}",
            f"To: {message['address']}",
            f"Subject: {header(message['subject'])}",
            f"Date: {format_datetime(datetime.now(UTC))}",
            # the message id is the outbox row's: a receiving system can drop a copy sent twice
            f"Message-ID: <{message['message_id']}@gatehouse.local>",
            f"X-Gatehouse-Message: {message['message_id']}",
            f"X-Gatehouse-Event: {message['event_type']} {message['event_id']}",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: base64",
        ]
        settings_url = f"{self.cfg.console_url.rstrip('/')}/api/notify/recipients/{message['recipient_id']}/preferences"
        footer = FOOTER.get(message.get("language"), FOOTER["en"]).format(url=settings_url)
        body = base64.encodebytes((message["body"].rstrip("\n") + "\n\n-- \n" + footer).encode()).replace(
            b"\n", b"\r\n")
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + body

    def send(self, message: dict) -> str:
        data = self._mail(message)
        sender = self.cfg.smtp_from.rsplit("<", 1)[-1].rstrip(">")
        for attempt in (1, 2):
            conn = self._connect()
            try:
                code, answer = conn.mail(sender)
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, answer, sender)
                code, answer = conn.rcpt(message["address"])
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({message["address"]: (code, answer)})
                code, answer = conn.data(data)
                if code != 250:
                    raise smtplib.SMTPDataError(code, answer)
                self.sent_on_conn += 1
                return f"{code} {answer.decode(errors='replace')}"
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if attempt == 2:
                    raise ChannelDown(f"SMTP server closed the connection: {exc}") from None
            except TimeoutError as exc:
                self._drop()
                raise Retryable(f"SMTP timed out: {exc}") from None
            except OSError as exc:
                self._drop()
                if attempt == 2:
                    raise ChannelDown(f"SMTP connection lost: {exc}") from None
            except smtplib.SMTPRecipientsRefused as exc:
                code, answer = next(iter(exc.recipients.values()))
                self._reset()
                raise (Permanent if code >= 500 else Retryable)(
                    f"{code} {answer.decode(errors='replace')} (recipient {message['address']})") from None
            except smtplib.SMTPResponseException as exc:
                self._reset()
                text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
                raise (Permanent if exc.smtp_code >= 500 else Retryable)(f"{exc.smtp_code} {text}") from None
        raise ChannelDown("SMTP unreachable")

    def _reset(self) -> None:
        try:
            if self.conn is not None:
                self.conn.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self._drop()


# -- HTTP providers ----------------------------------------------------------------------------------

def _post(session: requests.Session, url: str, body: bytes, headers: dict, timeout: float) -> requests.Response:
    try:
        return session.post(url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=timeout)
    except requests.exceptions.ConnectTimeout as exc:
        raise ChannelDown(f"{url}: connect timed out ({exc.__class__.__name__})") from None
    except requests.exceptions.Timeout:
        raise Retryable(f"{url}: no answer within {timeout} s") from None
    except requests.exceptions.ConnectionError as exc:
        if "Connection refused" in str(exc) or "Name or service" in str(exc) or "Failed to establish" in str(exc):
            raise ChannelDown(f"{url} unreachable: connection refused") from None
        raise Retryable(f"{url}: connection failed: {exc}") from None


def _judge(resp: requests.Response) -> str:
    answer = f"{resp.status_code} {resp.text[:500]}".strip()
    if 200 <= resp.status_code < 300:
        return answer
    if resp.status_code >= 500 or resp.status_code in (408, 429):
        raise Retryable(answer)
    raise Permanent(answer)


class SmsChannel(Channel):
    """An SMS provider's HTTP API: POST JSON {to, text, reference} with the API key as a bearer
    token; a 2xx answer is "accepted" (status sent); the provider's delivery receipt may follow
    (store.delivery_report). A real provider's adapter keeps this shape with its own fields."""

    name = "sms"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.session = requests.Session()

    def send(self, message: dict) -> str:
        text = message["subject"] if message["priority"] == "critical" else f"{message['subject']}\n{message['body']}"
        body = json.dumps({"to": message["address"], "text": text[:700], "reference": message["message_id"]},
                          ensure_ascii=False).encode()
        return _judge(_post(self.session, self.cfg.sms_url, body, {"Authorization": f"Bearer {self.cfg.sms_key}"},
                            self.cfg.sms_timeout_s))

    def close(self) -> None:
        self.session.close()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Gatehouse-Signature value: HMAC-SHA256 over "<timestamp>.<body>" with the
    recipient's secret, hex, prefixed "v1=". The receiver recomputes it and rejects old timestamps."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float | None = None,
           tolerance_s: float = 300) -> bool:
    """What a receiver does (and the tests' receiving server does)."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature or "")


class WebhookChannel(Channel):
    """POST the event as JSON to the recipient's URL, signed (see `sign`); 2xx is delivered."""

    name = "webhook"
    confirms_delivery = True

    def __init__(self, cfg: Config, secret_for):
        self.cfg = cfg
        self.secret_for = secret_for          # recipient_id -> secret
        self.session = requests.Session()

    def send(self, message: dict) -> str:
        secret = self.secret_for(message["recipient_id"])
        if not secret:
            raise Permanent("the recipient has no webhook secret")
        body = json.dumps({"message_id": message["message_id"], "event_id": message["event_id"],
                           "event_type": message["event_type"], "recipient_id": message["recipient_id"],
                           "priority": message["priority"], "subject": message["subject"], "text": message["body"],
                           "event": json.loads(message["data"]) if message.get("data") else None},
                          ensure_ascii=False, sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {"X-Gatehouse-Timestamp": timestamp, "X-Gatehouse-Signature": sign(secret, timestamp, body),
                   "X-Gatehouse-Message": message["message_id"]}
        try:
            return _judge(_post(self.session, message["address"], body, headers, self.cfg.webhook_timeout_s))
        except ChannelDown as exc:        # one receiver's endpoint, not the channel: counted and retried
            raise Retryable(str(exc)) from None

    def close(self) -> None:
        self.session.close()
