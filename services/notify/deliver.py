"""The delivery worker: sends due messages from notify's outbox and records what happened.

    python -m services.notify.deliver          (supervisord: [program:notify-deliver])

A plain-Python process with one thread per channel, not a nameko @timer: smtplib and requests
block, and one SMTP connection kept open in a thread of its own sends the 10,000 mails of
`make bench` well inside the goal, with no eventlet monkey-patching in the way (docs/notify.md).

Each channel thread: claim a batch of due messages (leased, so a crash hands them back), send
them in order, settle the batch in one transaction. A channel that cannot be reached at all
(ChannelDown) leaves its messages queued without counting an attempt and pauses, doubling up
to `channel_pause_max_s`: an SMTP server down for ten minutes delays mail, loses none, and
turns nothing into a dead letter. Provider errors (5xx, timeouts) count attempts with
exponential backoff and end as dead letters after `max_attempts`. Several workers (replicas) may
run at once: claims skip rows another worker holds (PostgreSQL) or are serialized (SQLite).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine

from gatehouse.db import engine_for
from services.notify import channels, store
from services.notify.config import Config, load

log = logging.getLogger("notify.deliver")
SEND_CHANNELS = ("email", "sms", "webhook")
SETTLE_TRIES = 8        # ~25 s of database trouble before a sent batch is left to its lease
SICK_AFTER = 3          # consecutive provider failures in one batch before the rest of it waits


def default_channels(engine: Engine, cfg: Config) -> dict[str, Callable[[], channels.Channel]]:
    def secret_for(recipient_id):
        with engine.connect() as conn:
            return store.webhook_secrets(conn, [recipient_id]).get(recipient_id)
    return {"email": lambda: channels.SmtpChannel(cfg), "sms": lambda: channels.SmsChannel(cfg),
            "webhook": lambda: channels.WebhookChannel(cfg, secret_for)}


class Deliverer:
    def __init__(self, engine: Engine, cfg: Config, factories: dict | None = None, clock=lambda: datetime.now(UTC)):
        self.engine, self.cfg, self.clock = engine, cfg, clock
        self.factories = factories or default_channels(engine, cfg)
        self.channels: dict[str, channels.Channel] = {}
        self.paused_until: dict[str, float] = {}
        self.pause_s: dict[str, float] = {}
        self.state: dict[str, str] = {}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def channel(self, name: str) -> channels.Channel:
        if name not in self.channels:
            self.channels[name] = self.factories[name]()
        return self.channels[name]

    def run_once(self, name: str) -> int:
        """Claim and send one batch of a channel's due messages; returns how many were claimed
        (0 if none were due or the channel is paused)."""
        if time.monotonic() < self.paused_until.get(name, 0):
            return 0
        with self.engine.begin() as conn:
            batch = store.claim(conn, name, self.clock(), self.cfg.batch, self.cfg.lease_s)
        if not batch:
            return 0
        channel = self.channel(name)
        outcomes, down, failing = [], None, 0
        started = time.monotonic()
        for message in batch:
            if down is None and time.monotonic() - started > self.cfg.lease_s / 2:
                # slow sends: give the rest back well before the lease ends, so no other worker
                # can claim a message this one is still about to send
                down, self.pause_s[name] = "batch took too long; the rest go in the next round", 0.0
            if down is not None:
                outcomes.append({"message_id": message["message_id"], "attempts": message["attempts"],
                                 "created_at": message["created_at"], "outcome": "wait", "answer": down,
                                 "delay": self.pause_s[name]})
                continue
            try:
                answer = channel.send(message)
                outcome = {"outcome": "delivered" if channel.confirms_delivery else "sent", "answer": answer}
                failing = 0
            except channels.ChannelDown as exc:
                down = str(exc)
                self._pause(name)
                outcome = {"outcome": "wait", "answer": down, "delay": self.pause_s[name]}
            except channels.Retryable as exc:
                outcome = {"outcome": "retry", "answer": str(exc)}
                failing += 1
                if failing >= SICK_AFTER and name != "webhook":
                    # the provider fails every message (500s, timeouts): the rest wait, uncounted,
                    # instead of each costing a timeout and an attempt in this round
                    down = f"{failing} failures in a row, last: {exc}"
                    self._pause(name)
            except channels.Permanent as exc:
                outcome = {"outcome": "failed", "answer": str(exc)}
            except Exception as exc:      # a bug or an odd message: this one fails, the rest go on
                log.exception("sending failed", extra={"message_id": message["message_id"]})
                outcome = {"outcome": "retry", "answer": f"{exc.__class__.__name__}: {exc}"}
            outcomes.append({"message_id": message["message_id"], "attempts": message["attempts"],
                             "created_at": message["created_at"], **outcome})
        now = self.clock()
        self._settle(outcomes, now)
        state = "down" if down else "up"
        if self.state.get(name) != state:
            with self.engine.begin() as conn:
                store.set_channel_state(conn, name, state, down, now)
            self.state[name] = state
            (log.warning if down else log.info)("channel %s is %s%s", name, state, f": {down}" if down else "")
        if down is None:
            self.pause_s.pop(name, None)
        return len(batch)

    def _settle(self, outcomes: list[dict], now: datetime) -> None:
        # what was sent must be recorded: a settle lost here means a resend when the lease ends
        for attempt in range(SETTLE_TRIES):
            try:
                with self.engine.begin() as conn:
                    store.settle(conn, outcomes, now, self.cfg)
                return
            except Exception:
                if attempt == SETTLE_TRIES - 1:
                    raise
                log.exception("could not record a batch's outcomes; trying again")
                time.sleep(min(5.0, 0.2 * 2 ** attempt))

    def _pause(self, name: str) -> None:
        self.pause_s[name] = min(self.cfg.channel_pause_max_s, max(0.5, self.pause_s.get(name, 0.25) * 2))
        self.paused_until[name] = time.monotonic() + self.pause_s[name]

    def digests(self) -> int:
        with self.engine.begin() as conn:
            return store.release_digests(conn, self.clock(), self.cfg)

    def drain(self, names=SEND_CHANNELS, rounds: int = 1000) -> int:
        """Send until nothing is due (tests, bench); returns how many were claimed."""
        total = 0
        for _ in range(rounds):
            n = sum(self.run_once(name) for name in names)
            total += n
            if n == 0:
                return total
        return total

    def _loop(self, name: str) -> None:
        while not self.stop.is_set():
            try:
                busy = self.run_once(name)
            except Exception:
                log.exception("delivery round failed (database?); trying again", extra={"channel": name})
                busy = 0
            if not busy:
                self.stop.wait(self.cfg.poll_s)

    def _housekeeping(self) -> None:
        rounds = 0
        while True:
            try:
                # the worker's own sign of life, listed with the channels in `notify status`
                with self.engine.begin() as conn:
                    store.set_channel_state(conn, "worker", "up", f"pid {os.getpid()}", self.clock())
                if rounds % 6 == 0:
                    self.digests()
            except Exception:
                log.exception("housekeeping round failed; trying again")
            rounds += 1
            if self.stop.wait(5.0):
                return

    def start(self, names=SEND_CHANNELS) -> None:
        for name in names:
            thread = threading.Thread(target=self._loop, args=(name,), name=f"deliver-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        thread = threading.Thread(target=self._housekeeping, name="deliver-digests", daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for channel in self.channels.values():
            channel.close()


def main(argv=None) -> int:
    from gatehouse.logs import setup as setup_logs
    parser = argparse.ArgumentParser(description="notify's delivery worker")
    parser.add_argument("--channel", action="append", choices=SEND_CHANNELS, help="only this channel (repeatable)")
    args = parser.parse_args(argv)
    setup_logs("notify-deliver")
    cfg = load()
    engine = engine_for("notify")
    worker = Deliverer(engine, cfg)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    worker.start(args.channel or SEND_CHANNELS)
    log.info("delivering", extra={"smtp": f"{cfg.smtp_host}:{cfg.smtp_port}", "sms": cfg.sms_url})
    done.wait()
    worker.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
