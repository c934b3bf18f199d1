"""Edge driver for one turnstile controller over Modbus TCP (pymodbus 3.16).

The driver keeps one connection to the controller, polls its counters and fault code, and turns
changes into events for the agent::

    passage                  passage_count went up (once per passage)
    door_forced              forced_count went up (once per forcing)
    device_fault             fault_code changed to non-zero     {"fault_code": "<n>"}
    device_fault_cleared     fault_code went back to 0
    device_offline           the controller cannot be reached   {"error": "<short reason>"}
    device_online            it can be reached again

The first connection attempt reports its outcome (``device_online`` or ``device_offline``); after
that each is reported once per transition. Counters are re-baselined after every (re)connection
(a controller may have restarted); the fault code is a level and is compared with the last one
seen, so a fault that appeared or cleared during an outage is still reported.

pymodbus retries and reconnects on its own by default; both are switched off (``retries=0``,
``reconnect_delay=0``) so a failure surfaces after one ``timeout_s`` and the driver reconnects
with its own exponential backoff. Everything is asynchronous: an unreachable controller costs
its own task some waiting and never delays other drivers in the event loop.
"""

from __future__ import annotations

import asyncio
import logging
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


class DeviceOffline(Exception):
    """The turnstile cannot be reached, or a command to it failed (it is then reported offline)."""


class _LinkDown(Exception):
    """A Modbus exchange failed; the connection is given up. The message is the short reason."""


@dataclass(frozen=True)
class RegisterRead:
    """One read request covering points at adjacent addresses of one register table."""

    table: str
    address: int
    roles: tuple[str, ...]


def plan_register_reads(points: dict[str, Point]) -> list[RegisterRead]:
    """Group register points into as few reads as possible: one per run of adjacent addresses."""
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
        self._reads = plan_register_reads({role: getattr(profile.points, role) for role in _POLLED_ROLES})
        self._client: AsyncModbusTcpClient | None = None
        self._online: bool | None = None  # None until the first connection attempt has an outcome
        self._first_outcome = asyncio.Event()  # set once _online is no longer None
        self._counters: dict[str, int] = {}
        self._fault_code = 0
        self._task: asyncio.Task | None = None
        self._relock_task: asyncio.Task | None = None

    @property
    def online(self) -> bool:
        return self._online is True

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
            self._counters = {role: status[role] for role in ("passage_count", "forced_count")}
            self._mark_online()
            self._apply_fault_code(status["fault_code"])
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
            reader = (
                client.read_input_registers
                if read.table == "input_register"
                else client.read_holding_registers
            )
            response = await self._transact(
                f"read {read.table} {read.address}",
                partial(reader, read.address, count=len(read.roles), device_id=self.profile.unit),
            )
            status.update(zip(read.roles, response.registers, strict=True))
        return status

    def _apply(self, status: dict[str, int]) -> None:
        passages = self._advance_counter("passage_count", status["passage_count"])
        if passages:
            self._cancel_relock()  # the controller relocks on passage
        for _ in range(passages):
            self._emit("passage", {})
        for _ in range(self._advance_counter("forced_count", status["forced_count"])):
            self._emit("door_forced", {})
        self._apply_fault_code(status["fault_code"])

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
