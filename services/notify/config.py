"""Notify's settings from the environment, with defaults pointing at the local dev servers
(`python -m services.notify.devservers`) that `make run` starts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from gatehouse import settings


@dataclass(frozen=True)
class Config:
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_from: str = "Gatehouse <notify@gatehouse.local>"
    smtp_timeout_s: float = 10.0
    sms_url: str = "http://127.0.0.1:8025/sms"
    sms_key: str = "dev-sms-key"
    sms_timeout_s: float = 5.0
    webhook_timeout_s: float = 5.0
    console_url: str = field(default_factory=lambda: f"http://{settings.console_address()}")
    # a provider's refusal or timeout: retried after base * factor**(attempts-1), at most max_delay,
    # and after max_attempts the message is a dead letter
    retry_base_s: float = 5.0
    retry_factor: float = 2.0
    retry_max_delay_s: float = 300.0
    max_attempts: int = 6
    # a channel that cannot be reached at all (connection refused): its messages wait, no attempt is
    # counted; the channel is tried again after a pause that doubles up to this cap
    channel_pause_max_s: float = 30.0
    max_wait_s: float = 86400.0     # ... but a message that waited this long is a dead letter (visible, retryable)
    poll_s: float = 0.5
    batch: int = 500
    lease_s: float = 120.0          # a claimed message not settled by then is claimed again (a crash)
    replay_window_s: float = 86400.0   # events that found nobody are replayed to recipients added this soon after
    # a storm (many messages of one event type to one person): past storm_limit in storm_window_s,
    # further email/SMS of that type are held and go out as one summary at the window's end
    storm_limit: int = 5
    storm_window_s: float = 600.0
    digest_hour: int = 8            # low-priority items go out in one digest a day at this local hour


ENV = {
    "smtp_host": "NOTIFY_SMTP_HOST", "smtp_port": "NOTIFY_SMTP_PORT", "smtp_from": "NOTIFY_SMTP_FROM",
    "smtp_timeout_s": "NOTIFY_SMTP_TIMEOUT_S", "sms_url": "NOTIFY_SMS_URL", "sms_key": "NOTIFY_SMS_KEY",
    "sms_timeout_s": "NOTIFY_SMS_TIMEOUT_S", "webhook_timeout_s": "NOTIFY_WEBHOOK_TIMEOUT_S",
    "console_url": "NOTIFY_CONSOLE_URL", "retry_base_s": "NOTIFY_RETRY_BASE_S",
    "retry_factor": "NOTIFY_RETRY_FACTOR", "retry_max_delay_s": "NOTIFY_RETRY_MAX_DELAY_S",
    "max_attempts": "NOTIFY_MAX_ATTEMPTS", "channel_pause_max_s": "NOTIFY_CHANNEL_PAUSE_MAX_S",
    "max_wait_s": "NOTIFY_MAX_WAIT_S",
    "poll_s": "NOTIFY_POLL_S", "batch": "NOTIFY_BATCH", "lease_s": "NOTIFY_LEASE_S",
    "storm_limit": "NOTIFY_STORM_LIMIT", "storm_window_s": "NOTIFY_STORM_WINDOW_S",
    "digest_hour": "NOTIFY_DIGEST_HOUR", "replay_window_s": "NOTIFY_REPLAY_WINDOW_S",
}


def load(**overrides) -> Config:
    """The settings from NOTIFY_* variables (see ENV), then `overrides`."""
    values = {}
    for f in fields(Config):
        raw = os.environ.get(ENV[f.name])
        if raw not in (None, ""):
            values[f.name] = type(getattr(Config(), f.name))(raw)
    values.update(overrides)
    return Config(**values)
