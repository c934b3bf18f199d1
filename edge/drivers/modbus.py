"""What every polled Modbus device driver shares: one TCP connection, polling, exponential
backoff of our own (pymodbus's retries and reconnection off), commands on the polling
connection, and `device_online` / `device_offline` reported once per outage.

`DeviceOffline` is raised by every driver (``edge.drivers.turnstile`` re-exports it), so one
except clause serves them all.
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
from edge.profiles import Point

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, str]], None]

_READERS = {
    "coil": "read_coils",
    "discrete_input": "read_discrete_inputs",
    "holding_register": "read_holding_registers",
    "input_register": "read_input_registers",
}
_BIT_TABLES = ("coil", "discrete_input")


class DeviceOffline(Exception):
    """The device cannot be reached, or a command to it failed (it is then reported offline)."""


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


async def _cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel a task and wait for it to end, cancelling again if the cancellation got lost.

    On Python 3.11, asyncio.wait_for (which pymodbus awaits every response and connect with)
    swallows a cancellation that arrives together with the response, and the task carries on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.01)


class PolledModbusDriver:
    """One Modbus TCP device: keeps a connection, polls ``self._reads``, reports online/offline.

    Subclasses set ``_reads`` and override ``_on_connect`` (baselines, before device_online) and
    ``_apply`` (each status read, after device_online; it may write through ``_transact``). One
    with background tasks of its own extends ``_detach_tasks`` so that ``stop`` cancels them too;
    ``_log`` is the logger the connection machinery writes to (a subclass may name its own).
    """

    kind = "device"
    _log = log

    def __init__(
        self,
        device_id: str,
        profile,
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
        self._reads: list[RegisterRead] = []
        self._client: AsyncModbusTcpClient | None = None
        self._online: bool | None = None  # None until the first connection attempt has an outcome
        self._first_outcome = asyncio.Event()  # set once _online is no longer None
        self._task: asyncio.Task | None = None

    @property
    def online(self) -> bool:
        return self._online is True

    async def start(self) -> None:
        """Start connecting and polling in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.kind} {self.device_id}")

    async def stop(self) -> None:
        """Stop polling (and any other background task of the driver) and close the connection."""
        tasks = [task for task in self._detach_tasks() if task is not None]
        await asyncio.gather(*(_cancel_and_wait(task) for task in tasks))
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- to override -------------------------------------------------------------------------

    def _detach_tasks(self) -> list[asyncio.Task | None]:
        """The background tasks ``stop`` cancels (together), each forgotten by the driver here."""
        task, self._task = self._task, None
        return [task]

    async def _on_connect(self, client: AsyncModbusTcpClient, status: dict[str, int]) -> None:
        """Right after (re)connecting, before device_online is reported."""

    async def _apply(self, client: AsyncModbusTcpClient, status: dict[str, int], connected: bool) -> None:
        """One status read; ``connected`` is True for the first one of a connection."""

    # -- connection and polling ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_and_poll()
            except _LinkDown as exc:
                self._mark_offline(str(exc))
            except Exception as exc:  # a bug must not silently end the supervision of a gate
                self._log.exception("%s: driver error", self.device_id)
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
            await self._on_connect(client, status)
            self._mark_online()
            await self._apply(client, status, connected=True)
            interval_s = self.profile.timing.poll_interval_ms / 1000
            while True:
                await asyncio.sleep(interval_s)
                await self._apply(client, await self._read_status(client), connected=False)
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

    async def _command(
        self, what: str, send: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """Run requests on the live connection; any failure marks the device offline (DeviceOffline).

        Right after start-up the first connection may still be under way: a command then waits
        for it (at most the profile's timeout) rather than failing.
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

    async def _write_coil(
        self, client: AsyncModbusTcpClient, what: str, point: Point, value: bool
    ) -> ModbusPDU:
        return await self._transact(
            what, partial(client.write_coil, point.address, value, device_id=self.profile.unit)
        )

    async def _read_bit(self, client: AsyncModbusTcpClient, what: str, point: Point) -> bool:
        reader = client.read_discrete_inputs if point.table == "discrete_input" else client.read_coils
        response = await self._transact(
            what, partial(reader, point.address, count=1, device_id=self.profile.unit)
        )
        return bool(response.bits[0])

    # -- state and events ----------------------------------------------------------------------

    def _mark_online(self) -> None:
        self._backoff.reset()
        self._first_outcome.set()
        if self._online is not True:
            self._online = True
            self._log.info("%s: online at %s:%d", self.device_id, self.host, self.port)
            self._emit("device_online", {})

    def _mark_offline(self, reason: str) -> None:
        self._first_outcome.set()
        if self._online is not False:
            self._online = False
            self._log.warning("%s: offline: %s", self.device_id, reason)
            self._emit("device_offline", {"error": reason})

    def _emit(self, kind: str, attributes: dict[str, str]) -> None:
        try:
            self._on_event(kind, attributes)
        except Exception:
            self._log.exception("%s: on_event(%r) failed", self.device_id, kind)
