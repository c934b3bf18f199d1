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
its own task some waiting and never delays other drivers in the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from edge.backoff import Backoff
from edge.profiles import DeviceProfile, Point

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, str]], None]

COUNTER_MODULO = 1 << 16
_POLLED_ROLES = ("passage_count", "forced_count", "fault_code")
_POLLED_OPTIONAL_ROLES = ("emergency_input", "door_open")  # polled when the profile has them
_READERS = {
    "coil": "read_coils",
    "discrete_input": "read_discrete_inputs",
    "holding_register": "read_holding_registers",
    "input_register": "read_input_registers",
}
_BIT_TABLES = ("coil", "discrete_input")


class DeviceOffline(Exception):
    """The turnstile cannot be reached, or a command to it failed (it is then reported offline)."""


class _LinkDown(Exception):
    """A Modbus exchange failed; the connection is given up. The message is the short reason."""


@dataclass(frozen=True)
class RegisterRead:
    """One read request covering points at adjacent addresses of one table (registers or bits)."""

    table: str
    address: int
    roles: tuple[str, ...]


def plan_register_reads(points: dict[str, Point]) -> list[RegisterRead]:
    """Group points into as few reads as possible: one per run of adjacent addresses in one table.

    Works for the bit tables as well (coils, discrete inputs): a read returns one value per role.
    """
    reads: list[RegisterRead] = []
    for role, point in sorted(points.items(), key=lambda item: (item[1].table, item[1].address)):
        last = reads[-1] if reads else None
        if last and last.table == point.table and last.address + len(last.roles) == point.address:
            reads[-1] = RegisterRead(last.table, last.address, (*last.roles, role))
        else:
            reads.append(RegisterRead(point.table, point.address, (role,)))
    return reads


def counter_increments(before: int, now: int) -> int | None:
    """How far a 16-bit counter moved forward, across the wrap; None if it went backwards (reset).

    Serial-number arithmetic: a step of half the range or more is read as the counter going
    backwards, which a controller does when its counters are reset, never by counting.
    """
    step = (now - before) % COUNTER_MODULO
    return None if step >= COUNTER_MODULO // 2 else step


async def _cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel a task and wait for it to end, cancelling again if the cancellation got lost.

    On Python 3.11, asyncio.wait_for (which pymodbus awaits every response and connect with)
    swallows a cancellation that arrives together with the response, and the task carries on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.01)


class TurnstileDriver:
    """Talks to one turnstile controller; events go to ``on_event(kind, attributes)``."""

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
        self.device_id = device_id
        self.profile = profile
        self.host = host
        self.port = port
        self._on_event = on_event
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        polled = {role: getattr(profile.points, role) for role in _POLLED_ROLES}
        polled.update(
            (role, point)
            for role in _POLLED_OPTIONAL_ROLES
            if (point := getattr(profile.points, role)) is not None
        )
        self._reads = plan_register_reads(polled)
        self._client: AsyncModbusTcpClient | None = None
        self._online: bool | None = None  # None until the first connection attempt has an outcome
        self._first_outcome = asyncio.Event()  # set once _online is no longer None
        self._counters: dict[str, int] = {}
        self._fault_code = 0
        self._emergency: bool | None = None  # None until first read
        self._door_open_since: float | None = None  # monotonic time the door was first seen open
        self._door_held = False  # door_held_open reported, door_closed not yet
        self._free_exit: bool | None = None  # the state asked for; None: never asked, never written
        self._task: asyncio.Task | None = None
        self._relock_task: asyncio.Task | None = None

    @property
    def online(self) -> bool:
        return self._online is True

    @property
    def free_exit(self) -> bool:
        """The free-exit state last asked for with set_free_exit (False if never asked)."""
        return self._free_exit is True

    async def start(self) -> None:
        """Start connecting and polling in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"turnstile {self.device_id}")

    async def stop(self) -> None:
        """Stop polling, drop any pending relock and close the connection."""
        tasks = [task for task in (self._relock_task, self._task) if task is not None]
        self._task = self._relock_task = None
        await asyncio.gather(*(_cancel_and_wait(task) for task in tasks))
        if self._client is not None:
            self._client.close()
            self._client = None

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
        response = await self._command("emergency_input", lambda client: self._read_bits(client, point))
        return bool(response.bits[0])

    # -- connection and polling ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_and_poll()
            except _LinkDown as exc:
                self._mark_offline(str(exc))
            except Exception as exc:  # a bug must not silently end the supervision of a gate
                log.exception("%s: driver error", self.device_id)
                self._mark_offline(f"driver error: {exc!r}")
            await self._backoff.sleep()

    async def _connect_and_poll(self) -> None:
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.device_id,
            timeout=self.profile.timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        try:
            if not await client.connect():
                raise _LinkDown(f"cannot connect to {self.host}:{self.port}")
            self._client = client
            status = await self._read_status(client)
            # The last await before going online: a set_free_exit refused meanwhile (offline) is
            # picked up by its loop, and once online set_free_exit writes for itself.
            await self._assert_free_exit(client)
            self._counters = {role: status[role] for role in ("passage_count", "forced_count")}
            if not self._door_held:
                self._door_open_since = None  # not watched during the outage: time it afresh
            self._mark_online()
            self._apply_levels(status)
            interval_s = self.profile.timing.poll_interval_ms / 1000
            while True:
                await asyncio.sleep(interval_s)
                self._apply(await self._read_status(client))
        finally:
            if self._client is client:
                self._client = None
            client.close()

    async def _read_status(self, client: AsyncModbusTcpClient) -> dict[str, int]:
        status: dict[str, int] = {}
        for read in self._reads:
            reader = getattr(client, _READERS[read.table])
            count = len(read.roles)
            response = await self._transact(
                f"read {read.table} {read.address}",
                partial(reader, read.address, count=count, device_id=self.profile.unit),
            )
            # bits come padded to a whole byte
            values = response.bits[:count] if read.table in _BIT_TABLES else response.registers
            status.update(zip(read.roles, map(int, values), strict=True))
        return status

    def _apply(self, status: dict[str, int]) -> None:
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

    async def _command(
        self, what: str, send: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """Run one request on the live connection; any failure marks the device offline.

        Right after start-up the first connection may still be under way: a command then waits
        for it (at most the profile's timeout) rather than failing the first person at the gate.
        """
        if self._online is None and self._task is not None:
            try:
                await asyncio.wait_for(self._first_outcome.wait(), timeout=self.profile.timeout_s)
            except TimeoutError:
                pass
        client = self._client
        if client is None or not self.online:
            raise DeviceOffline(f"{self.device_id}: offline, cannot {what}")
        try:
            return await send(client)
        except _LinkDown as exc:
            self._mark_offline(str(exc))
            client.close()  # the polling task sees the closed connection and reconnects
            raise DeviceOffline(f"{self.device_id}: {exc}") from None

    async def _write_unlock(self, client: AsyncModbusTcpClient, value: bool) -> ModbusPDU:
        return await self._transact(
            "unlock" if value else "relock",
            partial(
                client.write_coil, self.profile.points.unlock.address, value, device_id=self.profile.unit
            ),
        )

    async def _write_free_exit(self, client: AsyncModbusTcpClient, active: bool) -> ModbusPDU:
        point = self.profile.points.free_exit
        assert point is not None
        return await self._transact(
            f"free exit {'on' if active else 'off'}",
            partial(client.write_coil, point.address, active, device_id=self.profile.unit),
        )

    async def _assert_free_exit(self, client: AsyncModbusTcpClient) -> None:
        """On (re)connection: write the free-exit state asked for, if any (again if it changes meanwhile)."""
        written: bool | None = None
        while self._free_exit is not None and self._free_exit != written:
            written = self._free_exit
            await self._write_free_exit(client, written)
            log.info("%s: free exit %s written on connection", self.device_id, "on" if written else "off")

    async def _read_bits(self, client: AsyncModbusTcpClient, point: Point) -> ModbusPDU:
        reader = client.read_discrete_inputs if point.table == "discrete_input" else client.read_coils
        return await self._transact(
            f"read {point.table} {point.address}",
            partial(reader, point.address, count=1, device_id=self.profile.unit),
        )

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

    async def _transact(self, what: str, request: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """One Modbus request/response; raises _LinkDown with a short reason on any failure."""
        try:
            response = await request()  # pymodbus raises ConnectionException before sending if not connected
        except ConnectionException:
            raise _LinkDown(f"{what}: connection lost") from None
        except ModbusIOException:
            raise _LinkDown(f"{what}: no response within {self.profile.timeout_s:g} s") from None
        except (ModbusException, OSError) as exc:
            raise _LinkDown(f"{what}: {exc}") from None
        if response.isError():
            raise _LinkDown(f"{what}: device answered exception code {response.exception_code}")
        return response

    # -- state and events ------------------------------------------------------------------

    def _mark_online(self) -> None:
        self._backoff.reset()
        self._first_outcome.set()
        if self._online is not True:
            self._online = True
            log.info("%s: online at %s:%d", self.device_id, self.host, self.port)
            self._emit("device_online", {})

    def _mark_offline(self, reason: str) -> None:
        self._first_outcome.set()
        if self._online is not False:
            self._online = False
            log.warning("%s: offline: %s", self.device_id, reason)
            self._emit("device_offline", {"error": reason})

    def _emit(self, kind: str, attributes: dict[str, str]) -> None:
        try:
            self._on_event(kind, attributes)
        except Exception:
            log.exception("%s: on_event(%r) failed", self.device_id, kind)
