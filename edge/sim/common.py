"""What the device simulators (``edge.sim.turnstile``, ``.barrier``, ``.display``) share.

- the pymodbus 3.16 server: a ``SimDevice`` built from a profile's points (``build_device``),
  started with ``listen`` and stopped with ``shut_down``;
- the control helpers' Modbus TCP client (``control_client``, ``read_point``, ``set_fault``);
- the command line: ``serve_simulators`` runs one simulator per port until cancelled,
  ``make_parser`` and ``run`` are the ``python -m edge.sim.<device>`` front end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.profiles import Point, ProfileError, load_profile

# pymodbus's datastore picks the table from a function code: internal access uses each table's read code.
TABLE_CODE = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
BIT_TABLES = ("coil", "discrete_input")
COIL_WRITES = frozenset({5, 15})  # write single / multiple coils
REGISTER_WRITES = frozenset({6, 16, 22, 23})  # write single / multiple, mask write, read-write multiple


def simulation_points(profile, kind: str | None = None):
    """The profile's ``simulation`` section; ProfileError if it has none (or is not of ``kind``)."""
    if kind is not None and profile.kind != kind:
        raise ProfileError(f"profile {profile.model!r} is a {profile.kind} profile, not a {kind} one")
    if profile.simulation is None:
        raise ProfileError(f"profile {profile.model!r} has no simulation section; the simulator needs one")
    return profile.simulation


class Simulator(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# The server


def build_device(profile, values: Mapping[tuple[str, int], int], action: Callable) -> SimDevice:
    """A ``SimDevice`` with a block for every named point of the profile, holding its value from
    ``values`` by (table, address) (0 where absent), and ``action`` as the request hook."""
    blocks: dict[str, list[SimData]] = {table: [] for table in TABLE_CODE}
    for point in profile.named_points().values():
        value = values.get((point.table, point.address), 0)
        if point.table in BIT_TABLES:
            blocks[point.table].append(
                SimData(point.address, count=point.span, values=bool(value), datatype=DataType.BITS)
            )
        else:
            blocks[point.table].append(
                SimData(point.address, count=point.span, values=int(value), datatype=DataType.UINT16)
            )
    # pymodbus needs at least one block per table: an unused register table answers "illegal
    # address" everywhere; bit tables cannot be marked invalid, so an unused one reads 0 at 0.
    for table, table_blocks in blocks.items():
        if not table_blocks:
            if table in BIT_TABLES:
                table_blocks.append(SimData(0, values=False, datatype=DataType.BITS))
            else:
                table_blocks.append(SimData(0, datatype=DataType.INVALID))
    return SimDevice(
        id=profile.unit,
        simdata=(
            blocks["coil"],
            blocks["discrete_input"],
            blocks["holding_register"],
            blocks["input_register"],
        ),
        action=action,
    )


async def listen(name: str, device: SimDevice, host: str, port: int) -> ModbusTcpServer:
    """Serve ``device`` on ``host:port``; returns once connections are accepted (OSError if not)."""
    server = ModbusTcpServer(device, address=(host, port))
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:  # pymodbus reports a failed bind this way
        raise OSError(f"{name}: cannot listen: {exc}") from exc
    return server


async def shut_down(server: ModbusTcpServer) -> None:
    """Close the listening socket and every client connection, as if unplugged."""
    await server.shutdown()
    await asyncio.sleep(0)  # let the closed transports run connection_lost and release their sockets


# ---------------------------------------------------------------------------------------------
# Control helpers: a Modbus TCP client doing what a test or an operator would do to the device.


@asynccontextmanager
async def control_client(host: str, port: int, profile, device: str) -> AsyncIterator[AsyncModbusTcpClient]:
    """A connected client; ConnectionError naming ``device`` ("turnstile"...) if there is none."""
    client = AsyncModbusTcpClient(host, port=port, timeout=profile.timeout_s, retries=0, reconnect_delay=0)
    try:
        if not await client.connect():
            raise ConnectionError(f"no {device} at {host}:{port}")
        yield client
    finally:
        client.close()


async def read_point(client: AsyncModbusTcpClient, unit: int, point: Point) -> int:
    reader = {
        "coil": client.read_coils,
        "discrete_input": client.read_discrete_inputs,
        "holding_register": client.read_holding_registers,
        "input_register": client.read_input_registers,
    }[point.table]
    response = await reader(point.address, count=1, device_id=unit)
    if response.isError():
        raise ModbusException(f"reading {point.table} {point.address}: {response}")
    return int(response.bits[0]) if point.table in BIT_TABLES else response.registers[0]


async def write_fault(host: str, port: int, profile, code: int, device: str) -> None:
    """Set the controller's fault code (0 clears it); needs fault_code in a holding register."""
    point = profile.points.fault_code
    if point.table != "holding_register":
        raise ValueError(
            f"fault_code is an {point.table}; only a holding_register can be written over Modbus"
        )
    async with control_client(host, port, profile, device) as client:
        response = await client.write_register(point.address, code, device_id=profile.unit)
        if response.isError():
            raise ModbusException(f"set fault_code {code}: {response}")


# ---------------------------------------------------------------------------------------------
# Command line


async def serve_simulators(
    profile_path: str | Path, kind: str | None, ports: list[int], make: Callable[[Any, int], Simulator]
) -> None:
    """Run ``make(profile, port)`` for each port until cancelled; the profile is loaded (and checked
    to be of ``kind``) once."""
    if not ports:
        raise ValueError("serve needs at least one port")
    profile = load_profile(profile_path, kind=kind)
    simulators = [make(profile, port) for port in ports]
    try:
        for simulator in simulators:
            await simulator.start()
        await asyncio.Future()  # until cancelled
    finally:
        for simulator in simulators:
            with suppress(Exception):
                await simulator.stop()


def make_parser(device: str, plural: str, doc: str, default_port: int) -> argparse.ArgumentParser:
    """``python -m edge.sim.<device>``'s options: --profile, --host, --port (repeatable)."""
    parser = argparse.ArgumentParser(prog=f"python -m edge.sim.{device}", description=doc.splitlines()[0])
    parser.add_argument(
        "--profile", required=True, help=f"device profile YAML, e.g. edge/profiles/{device}-generic.yaml"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        help=f"port to listen on; repeat for more {plural} (default: {default_port})",
    )
    return parser


def run(parser: argparse.ArgumentParser, serve: Coroutine[Any, Any, None]) -> int:
    """Log to stderr and run ``serve`` until interrupted; a bad profile exits 2, a port that cannot
    be listened on 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    try:
        asyncio.run(serve)
    except ProfileError as exc:
        parser.exit(2, f"{exc}\n")
    except OSError as exc:
        parser.exit(1, f"{exc}\n")
    except KeyboardInterrupt:
        pass
    return 0
