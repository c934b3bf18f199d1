"""A lane LED display (plate, fee, message) on Modbus TCP, behaving as its device profile describes.

Run one on a laptop::

    python -m edge.sim.display --profile edge/profiles/display-generic.yaml --port 15041

Behaviour:

- ``plate``, ``fee_fen`` and ``message_code`` are plain holding registers: writing them shows
  nothing yet.
- ``commit`` coil <- 1 latches them: the display shows the plate (the UTF-8 bytes up to the first
  zero, two a register, first byte in the high half), the fee (32-bit, in the profile's word
  order; the profile's ``no_fee`` value shows no fee) and the message. ``commit`` reads back 0.
- What is shown is readable over Modbus in the ``simulation`` input registers (``shown_plate``,
  ``shown_fee_fen``, ``shown_message_code``) with ``shown_count`` +1 on every commit.
- ``stop()`` then ``start()`` is a power cycle: the display comes back blank, every register 0.

The decoding here is written independently of ``edge.drivers.display``'s encoding, so a test
reading back what is shown checks the driver against the profile, not against itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

from edge.profiles import DisplayProfile, DisplaySimulationPoints, ProfileError, Uint32Point
from edge.sim import common

log = logging.getLogger("edge.sim.display")  # not __name__: that is "__main__" under python -m

DEFAULT_PORT = 5040


def _plate_from_registers(registers: list[int]) -> str:
    raw = b"".join(value.to_bytes(2, "big") for value in registers)
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _uint32_from_registers(registers: list[int], point: Uint32Point) -> int:
    high, low = registers if point.word_order == "high_first" else reversed(registers)
    return (high << 16) | low


def _uint32_to_registers(value: int, point: Uint32Point) -> list[int]:
    words = [value >> 16, value & 0xFFFF]
    return words if point.word_order == "high_first" else words[::-1]


class DisplaySimulator:
    """One simulated LED display listening on ``host:port``."""

    def __init__(self, profile: DisplayProfile, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self._sim: DisplaySimulationPoints = common.simulation_points(profile, "display")
        self.profile = profile
        self.host = host
        self.port = port
        self._server: ModbusTcpServer | None = None
        self.shown: dict | None = None  # what the display shows now, None while blank

    @property
    def name(self) -> str:
        return f"{self.profile.model}@{self.host}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        self.shown = None
        self._server = await common.listen(self.name, self._build_device(), self.host, self.port)
        log.info("%s: listening (unit %d)", self.name, self.profile.unit)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await common.shut_down(server)
        log.info("%s: stopped", self.name)

    def _build_device(self) -> SimDevice:
        return common.build_device(self.profile, {}, self._on_request)  # blank: every register 0

    async def _on_request(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        _count: int,
        _registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus ``SimDevice.action``: a commit latches what the registers hold now."""
        if values is None or function_code not in common.COIL_WRITES:
            return
        offset = self.profile.points.commit.address - address
        if 0 <= offset < len(values):
            if values[offset]:
                await self._commit()
            values[offset] = False  # momentary

    async def _commit(self) -> None:
        points, sim, unit = self.profile.points, self._sim, self.profile.unit
        assert self._server is not None
        plate = await self._server.async_getValues(unit, 3, points.plate.address, points.plate.registers)
        fee = await self._server.async_getValues(unit, 3, points.fee_fen.address, 2)
        message = await self._server.async_getValues(unit, 3, points.message_code.address, 1)
        count = (await self._server.async_getValues(unit, 4, sim.shown_count.address, 1))[0]
        await self._server.async_setValues(unit, 4, sim.shown_plate.address, list(plate))
        fee_fen = _uint32_from_registers(list(fee), points.fee_fen)
        await self._server.async_setValues(
            unit, 4, sim.shown_fee_fen.address, _uint32_to_registers(fee_fen, sim.shown_fee_fen)
        )
        await self._server.async_setValues(unit, 4, sim.shown_message_code.address, list(message))
        await self._server.async_setValues(unit, 4, sim.shown_count.address, [(count + 1) % 65536])
        self.shown = {
            "plate": _plate_from_registers(list(plate)),
            "fee_fen": None if fee_fen == self.profile.no_fee else fee_fen,
            "message_code": message[0],
        }
        log.info("%s: showing %s", self.name, self.shown)


# ---------------------------------------------------------------------------------------------
# Control helpers over Modbus TCP.


def _client(host: str, port: int, profile: DisplayProfile):
    return common.control_client(host, port, profile, "display")


async def read_state(host: str, port: int, profile: DisplayProfile) -> dict:
    """What the display shows, read back over Modbus: ``{"plate": str, "fee_fen": int | None,
    "message_code": int, "shown_count": int}``; ``fee_fen`` is None when the profile's ``no_fee``
    value is shown (no fee line). Before any commit: plate "", fee_fen 0, message_code 0, shown_count 0."""
    sim = profile.simulation
    if sim is None:
        raise ProfileError(f"profile {profile.model!r} has no simulation section")
    shown = (sim.shown_plate, sim.shown_fee_fen, sim.shown_message_code, sim.shown_count)
    async with _client(host, port, profile) as client:
        registers: dict[int, int] = {}
        for point in shown:
            response = await client.read_input_registers(
                point.address, count=point.span, device_id=profile.unit
            )
            if response.isError():
                raise ModbusException(f"reading input_register {point.address}: {response}")
            registers.update(
                zip(range(point.address, point.address + point.span), response.registers, strict=True)
            )

    def block(point) -> list[int]:
        return [registers[address] for address in range(point.address, point.address + point.span)]

    fee_fen = _uint32_from_registers(block(sim.shown_fee_fen), sim.shown_fee_fen)
    return {
        "plate": _plate_from_registers(block(sim.shown_plate)),
        "fee_fen": None if fee_fen == profile.no_fee else fee_fen,
        "message_code": registers[sim.shown_message_code.address],
        "shown_count": registers[sim.shown_count.address],
    }


# ---------------------------------------------------------------------------------------------
# Command line


async def serve(profile_path: str | Path, host: str, ports: list[int]) -> None:
    await common.serve_simulators(profile_path, "display", ports, lambda profile, port: DisplaySimulator(profile, host, port))


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser("display", "displays", __doc__, DEFAULT_PORT)
    args = parser.parse_args(argv)
    return common.run(parser, serve(args.profile, args.host, args.port or [DEFAULT_PORT]))


if __name__ == "__main__":
    raise SystemExit(main())
