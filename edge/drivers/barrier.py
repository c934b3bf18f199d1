"""Edge driver for one barrier gate controller over Modbus TCP (pymodbus 3.16), with the safety rules.

The controller is trusted for nothing but moving the arm: the rules of DESIGN.md "Safety" live here.

- ``close()`` reads the loop first and refuses (returns False, writes nothing) while it reports
  presence.
- Safety interlock: a poll that sees presence while the arm is closing writes ``stop`` and then
  ``open`` at once, in that same poll, and reports ``barrier_reopened_for_safety``. "Closing" is
  a close this driver sent and whose closed limit has not been reached yet, or the arm leaving its
  open limit on its own (someone closed it at the controller). An arm resting between the limits
  (stopped, or found there after a (re)connection, its movement unknown) counts as possibly
  closing too: with presence it is opened, the safe direction.
- Auto-close: after ``open()``, once a vehicle has been seen on the loop and the loop has then
  been clear for ``timing.auto_close_s`` (presence coming back restarts the wait), the driver
  closes. The wait restarts after a reconnection and is only ever ended by a poll that saw the
  loop clear, so a reconnection never closes onto a vehicle. A close, or the arm found already
  closing or closed, ends the auto-close; an open the driver did not send never arms it.
- The driver polls ``open_limit``, ``closed_limit``, ``loop_presence`` and ``fault_code`` every
  ``timing.poll_interval_ms`` (adjacent points in one request), so it reacts within one poll.

Events for the agent, ``on_event(kind, attributes)``::

    barrier_opened               open_limit became 1
    barrier_closed               closed_limit became 1
    vehicle_present              loop_presence became 1
    vehicle_cleared              loop_presence went back to 0
    barrier_reopened_for_safety  presence while closing: stopped and opened   {"arm": "closing" | "stopped"}
    barrier_fault                {"reason": "fault_code", "fault_code": "<n>"}   fault_code became non-zero (or changed)
                                 {"reason": "travel_timeout", "moving": "opening" | "closing", "timeout_s": "<s>"}
                                 {"reason": "limit_switches"}    both limits at once
    barrier_fault_cleared        {"reason": ...}  the same reasons: fault_code back to 0, a limit
                                 reached after a travel timeout, the limits consistent again
    device_offline               the controller cannot be reached   {"error": "<short reason>"}
    device_online                it can be reached again

As with the turnstile driver, the first connection attempt reports its outcome and after that each
of device_online / device_offline is reported once per transition. The arm's limits seen at the
first connection are a silent baseline (no barrier_opened / barrier_closed); a vehicle already on
the loop is reported (vehicle_present) and so is a fault code already set. After a reconnection
everything is compared with what was last seen, so a change during an outage is still reported.

``edge.drivers.modbus.PolledModbusDriver`` is the connection, polling, backoff and online/offline
machinery, shared with ``edge.drivers.display.DisplayDriver`` and ``TurnstileDriver`` (retries and
pymodbus's own reconnection off, exponential backoff of our own, commands on the polling
connection, one ``DeviceOffline`` for every driver so one except clause serves all).
"""

from __future__ import annotations

import logging
import time

from pymodbus.client import AsyncModbusTcpClient

from edge.drivers.modbus import DeviceOffline, EventSink, PolledModbusDriver, plan_register_reads
from edge.profiles import BarrierProfile, ProfileError

log = logging.getLogger(__name__)

__all__ = ["BarrierDriver", "DeviceOffline"]

_POLLED_ROLES = ("open_limit", "closed_limit", "loop_presence", "fault_code")


class BarrierDriver(PolledModbusDriver):
    """Talks to one barrier gate controller and keeps the safety rules; events go to ``on_event``."""

    kind = "barrier"

    def __init__(
        self,
        device_id: str,
        profile: BarrierProfile,
        host: str,
        port: int,
        on_event: EventSink,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        if profile.kind != "barrier":
            raise ProfileError(f"profile {profile.model!r} is a {profile.kind} profile, not a barrier one")
        super().__init__(device_id, profile, host, port, on_event, backoff_initial_s, backoff_max_s)
        self.profile: BarrierProfile = profile
        self._reads = plan_register_reads({role: getattr(profile.points, role) for role in _POLLED_ROLES})
        self._limits: tuple[bool, bool] | None = None  # (open_limit, closed_limit) last seen
        self._present: bool | None = None  # None until first read
        self._fault_code = 0
        self._motion: str | None = None  # "opening" / "closing" (since _motion_since), "stopped", None
        self._motion_since = 0.0
        self._travel_fault = False
        self._limits_fault = False
        self._auto_close = False  # armed by open()
        self._vehicle_seen = False  # a vehicle was on the loop since the open
        self._clear_since: float | None = None  # monotonic time the loop was first seen clear again
        self._held = False  # emergency: the arm stays up until released (hold_open)

    @property
    def state(self) -> str:
        """``closed``, ``opening``, ``open``, ``closing``, ``stopped`` (between the limits, not moving
        as far as the driver knows), or ``unknown`` (never read, or both limits at once). The last
        state seen: while offline it may be stale (see ``online``)."""
        if self._limits is None or all(self._limits):
            return "unknown"
        if self._motion is not None:
            return self._motion
        open_limit, closed_limit = self._limits
        return "open" if open_limit else "closed" if closed_limit else "stopped"

    @property
    def vehicle_present(self) -> bool:
        """Whether the last poll saw a vehicle on the loop."""
        return self._present is True

    async def open(self) -> None:
        """Raise the arm; arms the auto-close. Raises DeviceOffline if the controller cannot be reached."""
        await self._command(
            "open", lambda client: self._write_coil(client, "open", self.profile.points.open, True)
        )
        self._set_motion("opening")
        self._auto_close = not self._held
        self._vehicle_seen = self._present is True
        self._clear_since = None
        log.info("%s: opened on request", self.device_id)

    async def hold_open(self, held: bool) -> None:
        """Emergency mode: raise the arm and keep it up (no auto-close, close() refused, raised
        again whenever a poll finds it down) until released. Released, it closes by the usual
        auto-close once the loop has been clear. The wish is kept while the controller is
        unreachable (DeviceOffline is raised, and the next poll applies it)."""
        self._held = held
        if held:
            self._auto_close = False
            await self.open()
        else:
            self._auto_close, self._vehicle_seen, self._clear_since = True, True, None
            log.info("%s: released from emergency hold", self.device_id)

    async def close(self) -> bool:
        """Lower the arm unless the loop reports presence (read now, not from the last poll).

        Returns True if the close was sent, False if refused because of a vehicle (nothing written).
        Ends any pending auto-close. Raises DeviceOffline if the controller cannot be reached.
        Refused (False) while held open in an emergency.
        """
        if self._held:
            log.warning("%s: close refused: held open (emergency)", self.device_id)
            return False

        async def read_then_close(client: AsyncModbusTcpClient) -> bool:
            if await self._read_bit(client, "read loop_presence", self.profile.points.loop_presence):
                return False
            await self._write_coil(client, "close", self.profile.points.close, True)
            return True

        sent = await self._command("close", read_then_close)
        if not sent:
            log.warning("%s: close refused: a vehicle is on the loop", self.device_id)
            return False
        self._set_motion("closing")
        self._auto_close = False
        log.info("%s: closing on request", self.device_id)
        return True

    # -- polling -------------------------------------------------------------------------------

    async def _on_connect(self, client: AsyncModbusTcpClient, status: dict[str, int]) -> None:
        # Not watched during the outage: an auto-close wait starts afresh from a poll that sees the
        # loop clear, and an arm found between the limits is in an unknown movement (unless ours).
        self._clear_since = None
        if (
            not status["open_limit"]
            and not status["closed_limit"]
            and self._motion not in ("opening", "closing")
        ):
            self._motion = None

    async def _apply(self, client: AsyncModbusTcpClient, status: dict[str, int], connected: bool) -> None:
        now = time.monotonic()
        limits = (bool(status["open_limit"]), bool(status["closed_limit"]))
        present = bool(status["loop_presence"])
        self._apply_limits(limits, now)
        self._apply_presence(present)
        self._apply_fault_code(status["fault_code"])
        if present and self.state in ("closing", "stopped"):
            await self._reopen_for_safety(client, now)
        self._check_travel(now)
        if self._held and self.state in ("closed", "closing", "stopped"):
            await self._write_coil(client, "open (held)", self.profile.points.open, True)
            self._set_motion("opening", now)
        if self._auto_close:
            await self._auto_close_step(client, present, now)

    def _apply_limits(self, limits: tuple[bool, bool], now: float) -> None:
        before, self._limits = self._limits, limits
        open_limit, closed_limit = limits
        if open_limit and closed_limit:
            if not self._limits_fault:
                self._limits_fault = True
                log.error("%s: open and closed limits both active", self.device_id)
                self._emit("barrier_fault", {"reason": "limit_switches"})
            return
        if self._limits_fault:
            self._limits_fault = False
            self._emit("barrier_fault_cleared", {"reason": "limit_switches"})
        was_open, was_closed = before if before is not None else (open_limit, closed_limit)
        reached_open, reached_closed = open_limit and not was_open, closed_limit and not was_closed
        # Where the arm is now ends the movement it was in, or shows one nobody told the driver of.
        if self._motion == "opening" and (open_limit or reached_closed):
            self._motion = None
        elif self._motion == "closing" and (closed_limit or reached_open):
            self._motion = None
        elif self._motion == "stopped" and (open_limit or closed_limit):
            self._motion = None
        elif self._motion is None and not open_limit and not closed_limit:
            if was_open:
                self._set_motion("closing", now)
                log.warning("%s: arm left its open limit without a close from the driver", self.device_id)
            elif was_closed:
                self._set_motion("opening", now)
        if reached_open:
            self._emit("barrier_opened", {})
        if reached_closed:
            self._emit("barrier_closed", {})
            if self._auto_close:
                self._auto_close = False  # closed by someone else: nothing left to close
        if self._travel_fault and self._motion is None and (open_limit or closed_limit):
            self._travel_fault = False
            self._emit("barrier_fault_cleared", {"reason": "travel_timeout"})

    def _apply_presence(self, present: bool) -> None:
        before, self._present = self._present, present
        if present == before or (before is None and not present):
            return
        self._emit("vehicle_present" if present else "vehicle_cleared", {})

    def _apply_fault_code(self, code: int) -> None:
        if code == self._fault_code:
            return
        self._fault_code = code
        if code:
            log.warning("%s: fault code %d", self.device_id, code)
            self._emit("barrier_fault", {"reason": "fault_code", "fault_code": str(code)})
        else:
            self._emit("barrier_fault_cleared", {"reason": "fault_code"})

    async def _reopen_for_safety(self, client: AsyncModbusTcpClient, now: float) -> None:
        arm = self.state
        points = self.profile.points
        await self._write_coil(client, "stop (safety)", points.stop, True)
        await self._write_coil(client, "open (safety)", points.open, True)
        self._set_motion("opening", now)
        # The vehicle under the arm is the one to let through: close once it has cleared the loop.
        self._auto_close, self._vehicle_seen, self._clear_since = True, True, None
        log.warning("%s: vehicle on the loop while %s: stopped and reopened", self.device_id, arm)
        self._emit("barrier_reopened_for_safety", {"arm": arm})

    def _check_travel(self, now: float) -> None:
        timeout_s = self.profile.timing.travel_timeout_s
        if (
            self._motion in ("opening", "closing")
            and not self._travel_fault
            and now - self._motion_since > timeout_s
        ):
            self._travel_fault = True
            log.error(
                "%s: arm %s for more than %g s without reaching its limit",
                self.device_id,
                self._motion,
                timeout_s,
            )
            self._emit(
                "barrier_fault",
                {"reason": "travel_timeout", "moving": self._motion, "timeout_s": f"{timeout_s:g}"},
            )

    async def _auto_close_step(self, client: AsyncModbusTcpClient, present: bool, now: float) -> None:
        if self.state in ("closing", "closed"):
            self._auto_close = False
            return
        if present:
            self._vehicle_seen, self._clear_since = True, None
            return
        if not self._vehicle_seen:
            return
        if self._clear_since is None:
            self._clear_since = now
            return
        if now - self._clear_since < self.profile.timing.auto_close_s:
            return
        # This very poll saw the loop clear; should a vehicle come now, the interlock reopens.
        await self._write_coil(client, "close (auto)", self.profile.points.close, True)
        self._set_motion("closing", now)
        self._auto_close = False
        log.info("%s: auto-close: loop clear for %.1f s", self.device_id, now - self._clear_since)

    def _set_motion(self, motion: str, now: float | None = None) -> None:
        self._motion = motion
        self._motion_since = time.monotonic() if now is None else now
