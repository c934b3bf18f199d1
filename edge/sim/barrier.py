"""A barrier gate controller (boom arm over one lane) on Modbus TCP, behaving as its profile describes.

Run one on a laptop::

    python -m edge.sim.barrier --profile edge/profiles/barrier-generic.yaml --port 15031

Behaviour (a deliberately dumb controller: the safety rules belong to the edge driver, and the
tests prove the driver keeps them against this simulator):

- The arm moves between fully down (position 0, ``closed_limit`` = 1) and fully up (position
  1000, ``open_limit`` = 1) in ``travel_ms`` (1500 ms unless set otherwise); in between both
  limits read 0. Its state is ``closed``, ``opening``, ``open``, ``closing`` or ``stopped``.
- ``open`` / ``close`` / ``stop`` coils <- 1 are momentary commands (they read back 0): raise,
  lower, stop the arm. A command may reverse a movement half-way. ``close`` closes even with a
  vehicle on the loop: this controller has no interlock of its own.
- ``vehicle_trigger`` <- 1 / 0: a vehicle drives onto / leaves the loop under the arm; the
  ``loop_presence`` input follows it and the trigger reads back the level.
- ``hits`` counts closing movements that came down onto a vehicle: the arm reaching the last
  quarter of its travel (position <= 250, the height of a car roof) while the loop reports
  presence, at most once per closing movement. With a correct driver it stays 0.
- ``travel_ms`` is a writable holding register; ``fault_code`` is a plain register.
- ``stop()`` then ``start()`` is a power cycle: the controller's coils and its fault code start at
  0 again and a moving arm stops where it is (``stopped``), while the physical world keeps its
  state: the arm's position, the vehicle on the loop, ``travel_ms`` and ``hits``.

The simulator is a real pymodbus 3.16 server built like ``edge.sim.turnstile``'s: a ``SimDevice``
whose ``action=`` hook turns client writes into arm behaviour, and internal reads and writes
through ``ModbusTcpServer.async_getValues/async_setValues`` that the hook never sees.

The control helpers at the bottom (``read_state``, ``set_vehicle``, ``set_travel_ms``,
``set_fault``, ``command``) talk to a running simulator over Modbus TCP, like any other client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path

from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

from edge.profiles import BarrierProfile, BarrierSimulationPoints, Point, ProfileError
from edge.sim import common

log = logging.getLogger("edge.sim.barrier")  # not __name__: that is "__main__" under python -m

DEFAULT_PORT = 5030
DEFAULT_TRAVEL_MS = 1500
FULL_TRAVEL = 1000  # arm_position when fully up
CONTACT_POSITION = 0.25  # below this the descending arm meets a car roof
ARM_STATES = ("closed", "opening", "open", "closing", "stopped")  # arm_state register: the index
_TICK_S = 0.005


class BarrierSimulator:
    """One simulated barrier gate controller listening on ``host:port``."""

    def __init__(
        self,
        profile: BarrierProfile,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        travel_ms: int = DEFAULT_TRAVEL_MS,
    ) -> None:
        self._sim: BarrierSimulationPoints = common.simulation_points(profile, "barrier")
        self.profile = profile
        self.host = host
        self.port = port
        self._server: ModbusTcpServer | None = None
        # The physical world: survives a power cycle of the controller.
        self._position = 0.0  # 0 fully down .. 1 fully up
        self._arm = "closed"
        self._vehicle = False
        self._travel_ms = travel_ms
        self._hits = 0
        self._hit_this_move = False
        self._motion_task: asyncio.Task | None = None
        points = profile.points
        self._coil_handlers: dict[int, Callable[[bool], Awaitable[bool]]] = {
            points.open.address: self._open_written,
            points.close.address: self._close_written,
            points.stop.address: self._stop_written,
            self._sim.vehicle_trigger.address: self._vehicle_triggered,
        }

    @property
    def name(self) -> str:
        return f"{self.profile.model}@{self.host}:{self.port}"

    @property
    def arm(self) -> str:
        """closed, opening, open, closing or stopped."""
        return self._arm

    @property
    def position(self) -> float:
        """0.0 fully down .. 1.0 fully up."""
        return self._position

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def vehicle_present(self) -> bool:
        return self._vehicle

    async def start(self) -> None:
        """Listen for Modbus TCP; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._server = await common.listen(self.name, self._build_device(), self.host, self.port)
        log.info("%s: listening (unit %d), arm %s", self.name, self.profile.unit, self._arm)

    async def stop(self) -> None:
        """Close the listening socket and every client connection, as if unplugged: a moving arm stops."""
        task, self._motion_task = self._motion_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self._arm in ("opening", "closing"):
            self._arm = "stopped"
        server, self._server = self._server, None
        if server is None:
            return
        await common.shut_down(server)
        log.info("%s: stopped", self.name)

    async def set_vehicle(self, present: bool) -> None:
        """A vehicle drives onto (True) or leaves (False) the loop under the arm."""
        if present != self._vehicle:
            log.info("%s: vehicle %s the loop", self.name, "on" if present else "off")
        self._vehicle = present
        if self._server is not None:
            await self._publish()

    async def set_travel_ms(self, travel_ms: int) -> None:
        if travel_ms < 1:
            raise ValueError("travel_ms must be at least 1")
        self._travel_ms = travel_ms
        if self._server is not None:
            await self._write(self._sim.travel_ms, travel_ms)

    # -- Modbus requests -------------------------------------------------------------------

    def _build_device(self) -> SimDevice:
        return common.build_device(self.profile, self._values(), self._on_request)

    def _values(self) -> dict[tuple[str, int], int]:
        """What the physical world shows on the controller's points, by (table, address)."""
        points, sim = self.profile.points, self._sim
        values: list[tuple[Point | None, int]] = [
            (points.open_limit, int(self._position >= 1.0)),
            (points.closed_limit, int(self._position <= 0.0)),
            (points.loop_presence, int(self._vehicle)),
            (sim.vehicle_trigger, int(self._vehicle)),
            (sim.travel_ms, self._travel_ms),
            (sim.hits, self._hits),
            (sim.arm_position, round(self._position * FULL_TRAVEL)),
            (sim.arm_state, ARM_STATES.index(self._arm)),
        ]
        return {(point.table, point.address): value for point, value in values if point is not None}

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus ``SimDevice.action``: runs before the datastore applies a request."""
        if values is None:
            return
        if function_code in common.COIL_WRITES:
            for offset, value in enumerate(values):
                handler = self._coil_handlers.get(address + offset)
                if handler is not None:
                    values[offset] = await handler(bool(value))
        elif function_code in common.REGISTER_WRITES:
            travel = self._sim.travel_ms
            if travel.table == "holding_register" and 0 <= travel.address - address < len(values):
                self._travel_ms = max(1, int(values[travel.address - address]))
                log.info("%s: travel_ms = %d", self.name, self._travel_ms)
            fault = self.profile.points.fault_code
            if fault.table == "holding_register" and 0 <= fault.address - address < len(values):
                old, new = registers[fault.address - start_address], values[fault.address - address]
                if new != old:
                    log.info("%s: fault_code %d -> %d", self.name, old, new)

    async def _open_written(self, value: bool) -> bool:
        if value and self._arm not in ("open", "opening"):
            self._move("opening")
            await self._publish()
        return False  # momentary command

    async def _close_written(self, value: bool) -> bool:
        if value and self._arm not in ("closed", "closing"):
            # No check of the loop here: a dumb controller closes onto whatever is under the arm.
            self._hit_this_move = False
            self._move("closing")
            await self._publish()
        return False

    async def _stop_written(self, value: bool) -> bool:
        if value and self._arm in ("opening", "closing"):
            self._arm = "stopped"
            log.info("%s: arm stopped at %d", self.name, round(self._position * FULL_TRAVEL))
            await self._publish()
        return False

    async def _vehicle_triggered(self, value: bool) -> bool:
        await self.set_vehicle(value)
        return value

    # -- the arm ---------------------------------------------------------------------------

    def _move(self, direction: str) -> None:
        log.info(
            "%s: arm %s from %d (travel %d ms)",
            self.name,
            direction,
            round(self._position * FULL_TRAVEL),
            self._travel_ms,
        )
        self._arm = direction
        if self._motion_task is None:
            self._motion_task = asyncio.create_task(self._run_arm(), name=f"arm {self.name}")

    async def _run_arm(self) -> None:
        last = time.monotonic()
        try:
            while self._arm in ("opening", "closing"):
                await asyncio.sleep(_TICK_S)
                now = time.monotonic()
                step = (now - last) * 1000 / max(self._travel_ms, 1)
                last = now
                if self._arm == "opening":
                    self._position = min(1.0, self._position + step)
                    if self._position >= 1.0:
                        self._arm = "open"
                        log.info("%s: arm open", self.name)
                elif self._arm == "closing":
                    self._position = max(0.0, self._position - step)
                    self._check_hit()
                    if self._position <= 0.0:
                        self._arm = "closed"
                        log.info("%s: arm closed", self.name)
                await self._publish()
        finally:
            if self._motion_task is asyncio.current_task():
                self._motion_task = None

    def _check_hit(self) -> None:
        if self._vehicle and self._position <= CONTACT_POSITION and not self._hit_this_move:
            self._hit_this_move = True
            self._hits += 1
            log.warning("%s: the closing arm came down onto a vehicle (hits = %d)", self.name, self._hits)

    async def _publish(self) -> None:
        """Write the physical world's state to the points (not the commands, travel_ms or fault_code)."""
        if self._server is None:
            return
        sim = self._sim
        for (table, address), value in self._values().items():
            if (table, address) != (sim.travel_ms.table, sim.travel_ms.address):
                await self._server.async_setValues(
                    self.profile.unit,
                    common.TABLE_CODE[table],
                    address,
                    [bool(value) if table in common.BIT_TABLES else value],
                )

    async def _write(self, point: Point, value: int | bool) -> None:
        assert self._server is not None
        await self._server.async_setValues(
            self.profile.unit, common.TABLE_CODE[point.table], point.address, [value]
        )


# ---------------------------------------------------------------------------------------------
# Control helpers: a Modbus TCP client doing what a test or an operator would do to the device.


def _client(host: str, port: int, profile: BarrierProfile):
    return common.control_client(host, port, profile, "barrier controller")


def _simulation(profile: BarrierProfile) -> BarrierSimulationPoints:
    if profile.simulation is None:
        raise ProfileError(f"profile {profile.model!r} has no simulation section")
    return profile.simulation


async def read_state(host: str, port: int, profile: BarrierProfile) -> dict:
    """Read the barrier back over Modbus: open_limit, closed_limit, loop_presence (bools), fault_code,
    travel_ms, hits (ints), and arm_position (0..1000) and arm_state (``"closing"``...) where the
    profile has those points."""
    sim = _simulation(profile)
    points = profile.points
    named: dict[str, Point | None] = {
        "open_limit": points.open_limit,
        "closed_limit": points.closed_limit,
        "loop_presence": points.loop_presence,
        "fault_code": points.fault_code,
        "travel_ms": sim.travel_ms,
        "hits": sim.hits,
        "arm_position": sim.arm_position,
        "arm_state": sim.arm_state,
    }
    async with _client(host, port, profile) as client:
        state: dict = {
            name: await common.read_point(client, profile.unit, point)
            for name, point in named.items()
            if point is not None
        }
    for name in ("open_limit", "closed_limit", "loop_presence"):
        state[name] = bool(state[name])
    if "arm_state" in state:
        state["arm_state"] = ARM_STATES[state["arm_state"]]
    return state


async def set_vehicle(host: str, port: int, profile: BarrierProfile, present: bool) -> None:
    """A vehicle drives onto (True) or leaves (False) the loop under the arm."""
    point = _simulation(profile).vehicle_trigger
    async with _client(host, port, profile) as client:
        response = await client.write_coil(point.address, present, device_id=profile.unit)
        if response.isError():
            raise ModbusException(f"set vehicle {int(present)}: {response}")


async def set_travel_ms(host: str, port: int, profile: BarrierProfile, travel_ms: int) -> None:
    """Set how long the arm takes between the limits, in ms (1..65535)."""
    point = _simulation(profile).travel_ms
    async with _client(host, port, profile) as client:
        response = await client.write_register(point.address, travel_ms, device_id=profile.unit)
        if response.isError():
            raise ModbusException(f"set travel_ms {travel_ms}: {response}")


async def set_fault(host: str, port: int, profile: BarrierProfile, code: int) -> None:
    """Set the controller's fault code (0 clears it); needs fault_code in a holding register."""
    await common.write_fault(host, port, profile, code, "barrier controller")


async def command(host: str, port: int, profile: BarrierProfile, what: str) -> None:
    """Send ``"open"``, ``"close"`` or ``"stop"`` straight to the controller, bypassing any driver
    (and so its safety rules): what a push button wired to the controller would do."""
    if what not in ("open", "close", "stop"):
        raise ValueError(f"what must be one of 'open', 'close', 'stop', not {what!r}")
    point = getattr(profile.points, what)
    async with _client(host, port, profile) as client:
        response = await client.write_coil(point.address, True, device_id=profile.unit)
        if response.isError():
            raise ModbusException(f"command {what}: {response}")


# ---------------------------------------------------------------------------------------------
# Command line


async def serve(
    profile_path: str | Path, host: str, ports: list[int], travel_ms: int = DEFAULT_TRAVEL_MS
) -> None:
    """Run one simulated barrier per port until cancelled."""
    await common.serve_simulators(
        profile_path, "barrier", ports, lambda profile, port: BarrierSimulator(profile, host, port, travel_ms)
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser("barrier", "barriers", __doc__, DEFAULT_PORT)
    parser.add_argument(
        "--travel-ms",
        type=int,
        default=DEFAULT_TRAVEL_MS,
        help="arm travel time in ms (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.travel_ms < 1:
        parser.error("--travel-ms must be at least 1")
    return common.run(parser, serve(args.profile, args.host, args.port or [DEFAULT_PORT], args.travel_ms))


if __name__ == "__main__":
    raise SystemExit(main())
