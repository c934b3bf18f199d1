"""Edge driver for one turnstile controller over Modbus TCP (pymodbus 3.16).

The driver keeps one connection to the controller, polls its counters, fault code and inputs
(``emergency_input`` and ``door_open`` where the profile has them), and turns changes into events
for the agent::

    passage                  passage_count went up (once per passage)
    door_forced              forced_count went up (once per forcing)
    device_fault             fault_code changed to non-zero     {"fault_code": "<n>"}
    device_fault_cleared     fault_code went back to 0
    emergency_input_on       emergency_input became 1
    emergency_input_off      emergency_input went back to 0
    door_held_open           door_open has been 1 for timing.held_open_s   {"held_s": "<s>"}
    door_closed              door_open went back to 0 after a door_held_open   {"held_s": "<s>"}
    device_offline           the controller cannot be reached   {"error": "<short reason>"}
    device_online            it can be reached again

The first connection attempt reports its outcome (``device_online`` or ``device_offline``); after
that each is reported once per transition. Counters are re-baselined after every (re)connection
(a controller may have restarted); the fault code and the emergency input are levels and are
compared with the last ones seen, so a change during an outage is still reported, an input already
active at the first connection is reported (``emergency_input_on``) and an unchanged one is not
reported again after a reconnection. ``held_s`` is how long the door has been open, from the poll
that first saw it open, in seconds with one decimal. A door is only timed while it is watched: an
outage restarts the timing of an opening not yet reported, while a held-open alarm already reported
stays raised until a poll sees the door closed (``door_closed``). Short openings report nothing.

``set_free_exit(True)`` puts the turnstile in free exit (fire evacuation). The driver remembers the
state asked for and writes it again after every reconnection, before it reports ``device_online``,
so a controller that restarted during an emergency turns freely again.

pymodbus retries and reconnects on its own by default; both are switched off (``retries=0``,
``reconnect_delay=0``) so a failure surfaces after one ``timeout_s`` and the driver reconnects
with its own exponential backoff. Everything is asynchronous: an unreachable controller costs
its own task some waiting and never delays other drivers in the event loop. That connection,
polling, backoff and online/offline machinery is ``edge.drivers.modbus.PolledModbusDriver``'s,
shared with the barrier and display drivers; ``DeviceOffline``, ``EventSink``, ``RegisterRead``
and ``plan_register_reads`` live there too and are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from edge.drivers.modbus import (
    DeviceOffline,
    EventSink,
    PolledModbusDriver,
    RegisterRead,
    plan_register_reads,
)
from edge.profiles import DeviceProfile

log = logging.getLogger(__name__)

__all__ = [
    "COUNTER_MODULO",
    "DeviceOffline",
    "EventSink",
    "RegisterRead",
    "TurnstileDriver",
    "counter_increments",
    "plan_register_reads",
]

COUNTER_MODULO = 1 << 16
_POLLED_ROLES = ("passage_count", "forced_count", "fault_code")
_POLLED_OPTIONAL_ROLES = ("emergency_input", "door_open")  # polled when the profile has them


def counter_increments(before: int, now: int) -> int | None:
    """How far a 16-bit counter moved forward, across the wrap; None if it went backwards (reset).

    Serial-number arithmetic: a step of half the range or more is read as the counter going
    backwards, which a controller does when its counters are reset, never by counting.
    """
    step = (now - before) % COUNTER_MODULO
    return None if step >= COUNTER_MODULO // 2 else step


class TurnstileDriver(PolledModbusDriver):
    """Talks to one turnstile controller; events go to ``on_event(kind, attributes)``."""

    kind = "turnstile"
    _log = log

    def __init__(
        self,
        device_id: str,
        profile: DeviceProfile,
        host: str,
        port: int,
        on_event: EventSink,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        super().__init__(device_id, profile, host, port, on_event, backoff_initial_s, backoff_max_s)
        self.profile: DeviceProfile = profile
        polled = {role: getattr(profile.points, role) for role in _POLLED_ROLES}
        polled.update(
            (role, point)
            for role in _POLLED_OPTIONAL_ROLES
            if (point := getattr(profile.points, role)) is not None
        )
        self._reads = plan_register_reads(polled)
        self._counters: dict[str, int] = {}
        self._fault_code = 0
        self._emergency: bool | None = None  # None until first read
        self._door_open_since: float | None = None  # monotonic time the door was first seen open
        self._door_held = False  # door_held_open reported, door_closed not yet
        self._free_exit: bool | None = None  # the state asked for; None: never asked, never written
        self._relock_task: asyncio.Task | None = None

    @property
    def free_exit(self) -> bool:
        """The free-exit state last asked for with set_free_exit (False if never asked)."""
        return self._free_exit is True

    async def unlock(self) -> None:
        """Release the turnstile for one passage: one coil write, acknowledged by the controller.

        After ``unlock_pulse_ms`` the driver writes the coil back to 0 itself, unless a passage was
        seen first or a newer unlock restarted the pulse. Raises DeviceOffline if it cannot unlock.
        """
        self._cancel_relock()  # before the write: a relock firing meanwhile must not land after it
        await self._command("unlock", lambda client: self._write_unlock(client, True))
        self._cancel_relock()  # a concurrent unlock may have armed one
        self._relock_task = asyncio.create_task(self._relock_after_pulse(), name=f"relock {self.device_id}")

    async def set_free_exit(self, active: bool) -> None:
        """Let the turnstile turn freely in the exit direction (True, fire evacuation) or not (False).

        One coil write, acknowledged by the controller. The state asked for is remembered first and
        written again after every reconnection, also when this write fails: it then raises
        DeviceOffline, and the controller gets the state as soon as it can be reached again.
        LookupError if the profile has no free_exit point.
        """
        point = self.profile.points.free_exit
        if point is None:
            raise LookupError(f"profile {self.profile.model!r} has no free_exit")
        self._free_exit = active
        log.info("%s: free exit %s asked for", self.device_id, "on" if active else "off")
        await self._command("set free exit", lambda client: self._write_free_exit(client, active))

    async def read_emergency(self) -> bool:
        """Whether the emergency release input is active; LookupError if the profile has none."""
        point = self.profile.points.emergency_input
        if point is None:
            raise LookupError(f"profile {self.profile.model!r} has no emergency_input")
        return await self._command(
            "emergency_input",
            lambda client: self._read_bit(client, f"read {point.table} {point.address}", point),
        )

    # -- polling ---------------------------------------------------------------------------

    def _detach_tasks(self) -> list[asyncio.Task | None]:
        """stop() also drops any pending relock."""
        relock, self._relock_task = self._relock_task, None
        return [relock, *super()._detach_tasks()]

    async def _on_connect(self, client: AsyncModbusTcpClient, status: dict[str, int]) -> None:
        # The last await before going online: a set_free_exit refused meanwhile (offline) is
        # picked up by its loop, and once online set_free_exit writes for itself.
        await self._assert_free_exit(client)
        self._counters = {role: status[role] for role in ("passage_count", "forced_count")}
        if not self._door_held:
            self._door_open_since = None  # not watched during the outage: time it afresh

    async def _apply(self, client: AsyncModbusTcpClient, status: dict[str, int], connected: bool) -> None:
        if connected:  # the counters were baselined on this very read
            self._apply_levels(status)
            return
        passages = self._advance_counter("passage_count", status["passage_count"])
        if passages:
            self._cancel_relock()  # the controller relocks on passage
        for _ in range(passages):
            self._emit("passage", {})
        for _ in range(self._advance_counter("forced_count", status["forced_count"])):
            self._emit("door_forced", {})
        self._apply_levels(status)

    def _apply_levels(self, status: dict[str, int]) -> None:
        self._apply_fault_code(status["fault_code"])
        if "emergency_input" in status:
            self._apply_emergency(bool(status["emergency_input"]))
        if "door_open" in status:
            self._apply_door_open(bool(status["door_open"]))

    def _advance_counter(self, role: str, now: int) -> int:
        before, self._counters[role] = self._counters[role], now
        increments = counter_increments(before, now)
        if increments is None:
            log.warning(
                "%s: %s went back from %d to %d; controller reset it, new baseline",
                self.device_id,
                role,
                before,
                now,
            )
            return 0
        return increments

    def _apply_fault_code(self, code: int) -> None:
        if code == self._fault_code:
            return
        self._fault_code = code
        if code:
            self._emit("device_fault", {"fault_code": str(code)})
        else:
            self._emit("device_fault_cleared", {})

    def _apply_emergency(self, active: bool) -> None:
        before, self._emergency = self._emergency, active
        if active == before or (before is None and not active):
            return
        log.warning("%s: emergency input %s", self.device_id, "active" if active else "released")
        self._emit("emergency_input_on" if active else "emergency_input_off", {})

    def _apply_door_open(self, is_open: bool) -> None:
        now = time.monotonic()
        if not is_open:
            if self._door_held:
                held_s = now - self._door_open_since if self._door_open_since is not None else 0.0
                log.info("%s: door closed after %.1f s held open", self.device_id, held_s)
                self._emit("door_closed", {"held_s": f"{held_s:.1f}"})
            self._door_open_since = None
            self._door_held = False
            return
        if self._door_open_since is None:
            self._door_open_since = now
        held_s = now - self._door_open_since
        if not self._door_held and held_s >= self.profile.timing.held_open_s:
            self._door_held = True
            log.warning("%s: door held open for %.1f s", self.device_id, held_s)
            self._emit("door_held_open", {"held_s": f"{held_s:.1f}"})

    # -- commands --------------------------------------------------------------------------

    async def _write_unlock(self, client: AsyncModbusTcpClient, value: bool) -> ModbusPDU:
        return await self._write_coil(client, "unlock" if value else "relock", self.profile.points.unlock, value)

    async def _write_free_exit(self, client: AsyncModbusTcpClient, active: bool) -> ModbusPDU:
        point = self.profile.points.free_exit
        assert point is not None
        return await self._write_coil(client, f"free exit {'on' if active else 'off'}", point, active)

    async def _assert_free_exit(self, client: AsyncModbusTcpClient) -> None:
        """On (re)connection: write the free-exit state asked for, if any (again if it changes meanwhile)."""
        written: bool | None = None
        while self._free_exit is not None and self._free_exit != written:
            written = self._free_exit
            await self._write_free_exit(client, written)
            log.info("%s: free exit %s written on connection", self.device_id, "on" if written else "off")

    async def _relock_after_pulse(self) -> None:
        await asyncio.sleep(self.profile.timing.unlock_pulse_ms / 1000)
        self._relock_task = None
        try:
            await self._command("relock", lambda client: self._write_unlock(client, False))
        except DeviceOffline as exc:
            log.warning(
                "%s: relock not sent (%s); the controller relocks on its own timer", self.device_id, exc
            )

    def _cancel_relock(self) -> None:
        if self._relock_task is not None:
            self._relock_task.cancel()
            self._relock_task = None
