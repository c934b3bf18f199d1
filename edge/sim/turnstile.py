"""A turnstile controller on Modbus TCP, behaving as its device profile describes.

Run two on a laptop::

    python -m edge.sim.turnstile --profile edge/profiles/turnstile-generic.yaml --port 15021 --port 15022

Behaviour (the controller's own firmware rules, which the edge agent must not rely on alone):

- unlock coil 0 -> 1: ``unlock_count`` += 1 and a relock timer of ``unlock_pulse_ms`` starts;
  when it runs out the coil goes back to 0. Writing 1 again while unlocked restarts the timer.
- ``passage_trigger`` <- 1: if unlocked, ``passage_count`` += 1 and the coil relocks at once;
  if locked, the arms block and nothing is counted.
- ``forced_trigger`` <- 1: ``forced_count`` += 1.
- ``free_exit`` coil <- 1: the turnstile turns freely in the exit direction, so a
  ``passage_trigger`` counts a passage even while locked (the lock is left as it is); <- 0: normal.
- ``door_open_trigger`` <- 1 / 0 sets the ``door_open`` input to 1 / 0, ``emergency_trigger``
  <- 1 / 0 sets ``emergency_input``; both read back as the value set.
- ``passage_trigger`` and ``forced_trigger`` read back as 0; counters wrap at 65536;
  ``fault_code`` is a plain register.
- ``stop()`` then ``start()`` is a power cycle: coils (unlock, free_exit), counters and the fault
  code start at 0 again, while the inputs (``door_open``, ``emergency_input``) keep their level,
  as wired inputs do.

The simulator is a real pymodbus 3.16 server. Its datastore is a ``SimDevice`` with one block
list per table; the ``action=`` hook sees every request before the datastore applies it, which
is where client writes become turnstile behaviour. The simulator's own reads and writes go through
``ModbusTcpServer.async_getValues/async_setValues`` with each table's read function code, so they
never look like client writes to the hook.

The control helpers at the bottom (``trigger``, ``set_fault``, ``set_door_open``, ``set_emergency``,
``read_state``) talk to a running simulator over Modbus TCP, like any other client would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

from edge.profiles import DeviceProfile, Point, ProfileError, SimulationPoints
from edge.sim import common

log = logging.getLogger("edge.sim.turnstile")  # not __name__: that is "__main__" under python -m

DEFAULT_PORT = 5020
COUNTER_MODULO = 1 << 16


class TurnstileSimulator:
    """One simulated turnstile controller listening on ``host:port``."""

    def __init__(self, profile: DeviceProfile, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self._sim: SimulationPoints = common.simulation_points(profile)
        self.profile = profile
        self.host = host
        self.port = port
        self._server: ModbusTcpServer | None = None
        self._unlocked = False
        self._free_exit = False
        self._door_open = False  # inputs: levels that survive a restart of the simulator
        self._emergency = False
        self._relock_task: asyncio.Task | None = None
        points = profile.points
        self._coil_handlers: dict[int, Callable[[bool], Awaitable[bool]]] = {
            points.unlock.address: self._unlock_written,
            self._sim.passage_trigger.address: self._passage_triggered,
            self._sim.forced_trigger.address: self._forced_triggered,
        }
        optional_handlers = (
            (points.free_exit, self._free_exit_written),
            (self._sim.door_open_trigger, self._door_open_triggered),
            (self._sim.emergency_trigger, self._emergency_triggered),
        )
        for point, handler in optional_handlers:
            if point is not None:
                self._coil_handlers[point.address] = handler

    @property
    def name(self) -> str:
        return f"{self.profile.model}@{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen for Modbus TCP; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._unlocked = False
        self._free_exit = False
        self._server = await common.listen(self.name, self._build_device(), self.host, self.port)
        log.info("%s: listening (unit %d)", self.name, self.profile.unit)

    async def stop(self) -> None:
        """Close the listening socket and every client connection, as if unplugged."""
        self._cancel_relock()
        server, self._server = self._server, None
        if server is None:
            return
        await common.shut_down(server)
        log.info("%s: stopped", self.name)

    def _build_device(self) -> SimDevice:
        return common.build_device(self.profile, self._input_levels(), self._on_request)

    def _input_levels(self) -> dict[tuple[str, int], bool]:
        """The inputs' current levels, and their triggers reading back the same, by (table, address)."""
        points, sim = self.profile.points, self._sim
        levels: dict[tuple[str, int], bool] = {}
        for point, level in (
            (points.door_open, self._door_open),
            (sim.door_open_trigger, self._door_open),
            (points.emergency_input, self._emergency),
            (sim.emergency_trigger, self._emergency),
        ):
            if point is not None:
                levels[(point.table, point.address)] = level
        return levels

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> None:
        """pymodbus ``SimDevice.action``: runs before the datastore applies a request.

        ``registers`` is the addressed table's storage from ``start_address`` on (still holding the
        old values); rewriting ``values`` in place changes what gets stored (triggers store 0).
        """
        if values is None:
            return
        if function_code in common.COIL_WRITES:
            for offset, value in enumerate(values):
                handler = self._coil_handlers.get(address + offset)
                if handler is not None:
                    values[offset] = await handler(bool(value))
            unlock_offset = self.profile.points.unlock.address - address
            if 0 <= unlock_offset < len(values):  # a multi-coil write may also have passed or relocked
                values[unlock_offset] = self._unlocked
        elif function_code in common.REGISTER_WRITES and self.profile.points.fault_code.table == "holding_register":
            fault_address = self.profile.points.fault_code.address
            if 0 <= fault_address - address < len(values):
                old, new = registers[fault_address - start_address], values[fault_address - address]
                if new != old:
                    log.info("%s: fault_code %d -> %d", self.name, old, new)

    async def _unlock_written(self, value: bool) -> bool:
        if not value:
            if self._unlocked:
                await self._lock("relock written")
            return False
        if not self._unlocked:
            self._unlocked = True
            count = await self._increment(self._sim.unlock_count)
            log.info("%s: unlocked (unlock #%d, pulse %d ms)", self.name, count, self._pulse_ms)
        self._cancel_relock()
        self._relock_task = asyncio.create_task(self._relock_after_pulse())
        return True

    async def _passage_triggered(self, value: bool) -> bool:
        if value:
            if self._unlocked:
                count = await self._increment(self.profile.points.passage_count)
                log.info("%s: passage (passage_count = %d)", self.name, count)
                await self._lock("passage")
            elif self._free_exit:
                count = await self._increment(self.profile.points.passage_count)
                log.info("%s: free exit passage (passage_count = %d)", self.name, count)
            else:
                log.info("%s: passage blocked, turnstile is locked", self.name)
        return False

    async def _forced_triggered(self, value: bool) -> bool:
        if value:
            count = await self._increment(self.profile.points.forced_count)
            log.info("%s: forced (forced_count = %d)", self.name, count)
        return False

    async def _free_exit_written(self, value: bool) -> bool:
        if value != self._free_exit:
            self._free_exit = value
            log.info("%s: free exit %s", self.name, "on: arms turn freely outwards" if value else "off")
        return value

    async def _door_open_triggered(self, value: bool) -> bool:
        await self.set_door_open(value)
        return value

    async def _emergency_triggered(self, value: bool) -> bool:
        await self.set_emergency(value)
        return value

    async def set_door_open(self, is_open: bool) -> None:
        """The arm / door leaves (True) or returns to (False) its home position: the door_open input."""
        point = self.profile.points.door_open
        if point is None:
            raise ProfileError(f"profile {self.profile.model!r} has no door_open point")
        if is_open != self._door_open:
            log.info("%s: door %s", self.name, "open" if is_open else "closed")
        self._door_open = is_open
        await self._write_level(point, self._sim.door_open_trigger, is_open)

    async def set_emergency(self, active: bool) -> None:
        """The fire panel activates (True) or releases (False) the emergency_input."""
        point = self.profile.points.emergency_input
        if point is None:
            raise ProfileError(f"profile {self.profile.model!r} has no emergency_input point")
        if active != self._emergency:
            log.info("%s: emergency input %s", self.name, "active" if active else "released")
        self._emergency = active
        await self._write_level(point, self._sim.emergency_trigger, active)

    async def _write_level(self, point: Point, trigger: Point | None, level: bool) -> None:
        # Not running: the level is kept and the next start() serves it.
        if self._server is None:
            return
        await self._write(point, level)
        if trigger is not None:
            await self._write(trigger, level)

    @property
    def _pulse_ms(self) -> int:
        return self.profile.timing.unlock_pulse_ms

    async def _relock_after_pulse(self) -> None:
        await asyncio.sleep(self._pulse_ms / 1000)
        self._relock_task = None
        await self._lock(f"pulse of {self._pulse_ms} ms elapsed")

    def _cancel_relock(self) -> None:
        if self._relock_task is not None:
            self._relock_task.cancel()
            self._relock_task = None

    async def _lock(self, reason: str) -> None:
        self._cancel_relock()
        self._unlocked = False
        if self._server is not None:
            await self._write(self.profile.points.unlock, False)
        log.info("%s: locked (%s)", self.name, reason)

    async def _increment(self, point: Point) -> int:
        value = (await self._read(point) + 1) % COUNTER_MODULO
        await self._write(point, value)
        return value

    async def _read(self, point: Point) -> int:
        assert self._server is not None
        values = await self._server.async_getValues(
            self.profile.unit, common.TABLE_CODE[point.table], point.address, 1
        )
        return int(values[0])

    async def _write(self, point: Point, value: int | bool) -> None:
        assert self._server is not None
        await self._server.async_setValues(
            self.profile.unit, common.TABLE_CODE[point.table], point.address, [value]
        )


# ---------------------------------------------------------------------------------------------
# Control helpers: a Modbus TCP client doing what a test or an operator would do to the device.


def _client(host: str, port: int, profile: DeviceProfile):
    return common.control_client(host, port, profile, "turnstile")


async def trigger(host: str, port: int, profile: DeviceProfile, what: str) -> None:
    """Simulate a person walking through (``"passage"``) or forcing the turnstile (``"forced"``)."""
    if profile.simulation is None:
        raise ProfileError(f"profile {profile.model!r} has no simulation section")
    points = {"passage": profile.simulation.passage_trigger, "forced": profile.simulation.forced_trigger}
    if what not in points:
        raise ValueError(f"what must be one of {sorted(points)}, not {what!r}")
    async with _client(host, port, profile) as client:
        response = await client.write_coil(points[what].address, True, device_id=profile.unit)
        if response.isError():
            raise ModbusException(f"trigger {what}: {response}")


async def set_door_open(host: str, port: int, profile: DeviceProfile, is_open: bool) -> None:
    """Move the arm / door out of (True) or back to (False) its home position."""
    await _set_level(host, port, profile, "door_open_trigger", is_open)


async def set_emergency(host: str, port: int, profile: DeviceProfile, active: bool) -> None:
    """Activate (True) or release (False) the controller's emergency input, as a fire panel would."""
    await _set_level(host, port, profile, "emergency_trigger", active)


async def _set_level(host: str, port: int, profile: DeviceProfile, trigger_role: str, level: bool) -> None:
    point = getattr(profile.simulation, trigger_role, None) if profile.simulation is not None else None
    if point is None:
        raise ProfileError(f"profile {profile.model!r} has no simulation.{trigger_role}")
    async with _client(host, port, profile) as client:
        response = await client.write_coil(point.address, level, device_id=profile.unit)
        if response.isError():
            raise ModbusException(f"set {trigger_role} {int(level)}: {response}")


async def set_fault(host: str, port: int, profile: DeviceProfile, code: int) -> None:
    """Set the controller's fault code (0 clears it); needs fault_code in a holding register."""
    await common.write_fault(host, port, profile, code, "turnstile")


async def read_state(host: str, port: int, profile: DeviceProfile) -> dict:
    """Read the turnstile back over Modbus: unlocked, passage_count, forced_count, fault_code,
    unlock_count, and free_exit, door_open, emergency_input where the profile has those points."""
    if profile.simulation is None:
        raise ProfileError(f"profile {profile.model!r} has no simulation section")
    points = profile.points
    named = {
        "unlocked": points.unlock,
        "passage_count": points.passage_count,
        "forced_count": points.forced_count,
        "fault_code": points.fault_code,
        "unlock_count": profile.simulation.unlock_count,
        "free_exit": points.free_exit,
        "door_open": points.door_open,
        "emergency_input": points.emergency_input,
    }
    async with _client(host, port, profile) as client:
        state = {
            name: await common.read_point(client, profile.unit, point)
            for name, point in named.items()
            if point is not None
        }
    for name, point in named.items():
        if point is not None and point.table in common.BIT_TABLES:
            state[name] = bool(state[name])
    return state


# ---------------------------------------------------------------------------------------------
# Command line


async def serve(profile_path: str | Path, host: str, ports: list[int]) -> None:
    """Run one simulated turnstile per port until cancelled."""
    await common.serve_simulators(profile_path, None, ports, lambda profile, port: TurnstileSimulator(profile, host, port))


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser("turnstile", "turnstiles", __doc__, DEFAULT_PORT)
    args = parser.parse_args(argv)
    return common.run(parser, serve(args.profile, args.host, args.port or [DEFAULT_PORT]))


if __name__ == "__main__":
    raise SystemExit(main())
