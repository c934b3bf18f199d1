"""Edge driver for one lane LED display over Modbus TCP (pymodbus 3.16).

``show(plate, fee_fen, message)`` checks everything first (a bad plate, fee or message name is a
ValueError and nothing is written), then writes the plate, fee and message registers (adjacent
registers in one request) and pulses ``commit``, on which the display latches them: a failure
half-way leaves the display showing the previous content, never a mix.

- ``plate``: UTF-8, at most two bytes per register of ``points.plate`` (32 bytes on the GH-LED40:
  皖A12345 takes 9), zero-padded; an empty plate shows none.
- ``fee_fen``: integer fen, 0 .. ``no_fee`` - 1; None writes the profile's ``no_fee`` (no fee line).
- ``message``: one of the names under the profile's ``messages`` (``idle``, ``welcome``,
  ``pay_at_exit``, ``paid``, ``lot_full``, ``not_allowed``, ``wait_for_cashier``,
  ``confirm_with_guard``); the profile maps it to the vendor's code.

The driver polls ``message_code`` every ``timing.poll_interval_ms`` only to know the display is
there, and reports ``device_offline`` / ``device_online`` exactly like the other drivers; ``show``
raises DeviceOffline while the display cannot be reached. It does not rewrite the last content
after a reconnection: what a lane shows is the agent's current decision, not a stale one.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from pymodbus.client import AsyncModbusTcpClient

from edge.drivers.modbus import DeviceOffline, EventSink, PolledModbusDriver, plan_register_reads
from edge.profiles import DisplayProfile, ProfileError, RegisterBlockPoint, Uint32Point

log = logging.getLogger(__name__)

__all__ = ["DeviceOffline", "DisplayDriver", "encode_fee", "encode_plate"]

MAX_REGISTERS_PER_WRITE = 123  # Modbus limit for write multiple registers


def encode_plate(plate: str, point: RegisterBlockPoint) -> list[int]:
    """The plate as the point's registers: UTF-8, two bytes each (high half first), zero-padded."""
    if not isinstance(plate, str):
        raise TypeError(f"plate must be a str, not {type(plate).__name__}")
    if "\0" in plate:
        raise ValueError("plate must not contain NUL characters")
    raw = plate.encode("utf-8")
    capacity = point.registers * 2
    if len(raw) > capacity:
        raise ValueError(
            f"plate {plate!r} is {len(raw)} bytes in UTF-8; the display holds at most {capacity}"
        )
    raw = raw.ljust(capacity, b"\0")
    return [int.from_bytes(raw[index : index + 2], "big") for index in range(0, capacity, 2)]


def encode_fee(fee_fen: int, point: Uint32Point) -> list[int]:
    """A 32-bit unsigned value as two registers in the point's word order."""
    words = [fee_fen >> 16, fee_fen & 0xFFFF]
    return words if point.word_order == "high_first" else words[::-1]


class DisplayDriver(PolledModbusDriver):
    """Talks to one LED display; events (device_online / device_offline) go to ``on_event``."""

    kind = "display"

    def __init__(
        self,
        device_id: str,
        profile: DisplayProfile,
        host: str,
        port: int,
        on_event: EventSink,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        if profile.kind != "display":
            raise ProfileError(f"profile {profile.model!r} is a {profile.kind} profile, not a display one")
        super().__init__(device_id, profile, host, port, on_event, backoff_initial_s, backoff_max_s)
        self.profile: DisplayProfile = profile
        self._reads = plan_register_reads({"message_code": profile.points.message_code})
        self._lock = asyncio.Lock()  # one update at a time: two must not interleave their writes
        self.shown: dict | None = None  # the last content committed: plate, fee_fen, message

    @property
    def messages(self) -> list[str]:
        """The message names ``show`` accepts."""
        return list(self.profile.messages.codes())

    async def show(self, plate: str, fee_fen: int | None, message: str) -> None:
        """Show a plate, a fee in fen (None: no fee) and a message by name.

        ValueError (TypeError for a wrong type) before anything is written if the input does not
        fit; DeviceOffline if the display cannot be reached.
        """
        registers = self._encode(plate, fee_fen, message)
        commit = self.profile.points.commit

        async def write(client: AsyncModbusTcpClient) -> None:
            for start, values in _runs(registers):
                await self._transact(
                    f"write holding_register {start}",
                    partial(client.write_registers, start, values, device_id=self.profile.unit),
                )
            await self._write_coil(client, "commit", commit, True)

        async with self._lock:
            await self._command("show", write)
            self.shown = {"plate": plate, "fee_fen": fee_fen, "message": message}
        log.info("%s: showing %r, fee %s, %s", self.device_id, plate, fee_fen, message)

    async def clear(self) -> None:
        """Blank the display: no plate, no fee, the ``idle`` message."""
        await self.show("", None, "idle")

    def _encode(self, plate: str, fee_fen: int | None, message: str) -> dict[int, int]:
        points, codes = self.profile.points, self.profile.messages.codes()
        if message not in codes:
            raise ValueError(f"unknown message {message!r}; one of {', '.join(codes)}")
        if fee_fen is None:
            fee = self.profile.no_fee
        elif isinstance(fee_fen, bool) or not isinstance(fee_fen, int):
            raise TypeError(f"fee_fen must be an int (fen) or None, not {type(fee_fen).__name__}")
        elif not 0 <= fee_fen < self.profile.no_fee:
            raise ValueError(f"fee_fen must be 0 .. {self.profile.no_fee - 1}, not {fee_fen}")
        else:
            fee = fee_fen
        registers: dict[int, int] = {}
        for point, values in (
            (points.plate, encode_plate(plate, points.plate)),
            (points.fee_fen, encode_fee(fee, points.fee_fen)),
            (points.message_code, [codes[message]]),
        ):
            registers.update(zip(range(point.address, point.address + point.span), values, strict=True))
        return registers


def _runs(registers: dict[int, int]) -> list[tuple[int, list[int]]]:
    """Adjacent addresses grouped into as few writes as the protocol allows."""
    runs: list[tuple[int, list[int]]] = []
    for address in sorted(registers):
        if runs and runs[-1][0] + len(runs[-1][1]) == address and len(runs[-1][1]) < MAX_REGISTERS_PER_WRITE:
            runs[-1][1].append(registers[address])
        else:
            runs.append((address, [registers[address]]))
    return runs
