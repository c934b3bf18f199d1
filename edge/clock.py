"""The time the agent decides by.

A gate box's wall clock cannot be trusted: a flat RTC battery, a wrong NTP server or a person
with a keyboard can move it, and a clock moved forward would open schedules that should be
closed. So the agent keeps its own time:

- Trusted: the centre's time from the last Hello, advanced by the kernel's boot-time clock
  (CLOCK_BOOTTIME: monotonic, counts suspend, untouched by changes of the wall clock). The
  anchor is kept on disk with the boot id, so an agent restarted on the same boot stays
  trusted while offline.
- Untrusted: after a reboot with no centre, the wall clock, but never earlier than the
  latest trusted time the agent has seen (so moving the clock back cannot revive an expired
  card). Access that depends on a schedule is refused until the centre is reached again;
  access without a schedule keeps working (see rules.decide, clock_untrusted).

The wall clock is only watched: a difference of more than DRIFT_WARN_S is logged.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("edge.clock")
DRIFT_WARN_S = 5.0
FLOOR_EVERY_S = 30.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class TrustedClock:
    def __init__(self, load: Callable[[str], str | None], save: Callable[[str, str], None],
                 wall: Callable[[], float] = time.time, boottime: Callable[[], float] = _boottime,
                 boot_id: Callable[[], str] = _boot_id):
        self._load, self._save, self.wall, self.boottime = load, save, wall, boottime
        self.boot = boot_id()
        self._anchor: tuple[float, float] | None = None     # (centre unix time, boottime then)
        self._floor = float(load("clock_floor") or 0)
        self._floor_saved_at = 0.0
        saved = load("clock_anchor")
        if saved:
            anchor = json.loads(saved)
            if anchor.get("boot_id") == self.boot and self.boot:
                self._anchor = (anchor["server"], anchor["boottime"])

    @property
    def trusted(self) -> bool:
        return self._anchor is not None

    def anchor(self, server_unix: float) -> None:
        """The centre told us its time (Hello): from now on, that time advanced by boottime."""
        self._anchor = (server_unix, self.boottime())
        self._save("clock_anchor", json.dumps({"server": server_unix, "boottime": self._anchor[1],
                                               "boot_id": self.boot}))
        drift = self.wall() - server_unix
        if abs(drift) > DRIFT_WARN_S:
            log.warning("this box's wall clock is off; deciding by the centre's time",
                        extra={"wall_minus_centre_s": round(drift, 1)})
        self._remember(server_unix)

    def now(self) -> tuple[float, bool]:
        """(unix seconds, trusted?)"""
        if self._anchor is not None:
            server, at = self._anchor
            current = server + (self.boottime() - at)
            if current - self._floor_saved_at >= FLOOR_EVERY_S:
                self._remember(current)
            return current, True
        return max(self.wall(), self._floor), False

    def _remember(self, current: float) -> None:
        self._floor = max(self._floor, current)
        self._floor_saved_at = current
        self._save("clock_floor", repr(self._floor))
