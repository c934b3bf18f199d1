"""Turnstile profile, simulator and driver, against the real simulator over Modbus TCP on loopback.

pytest-asyncio is not used: each test drives its coroutine with ``run()``. Timing assertions poll
with deadlines instead of sleeping for fixed lengths.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from edge.drivers.turnstile import (
    DeviceOffline,
    RegisterRead,
    TurnstileDriver,
    counter_increments,
    plan_register_reads,
)
from edge.profiles import PROFILES_DIR, DeviceProfile, ProfileError, load_profile
from edge.sim.turnstile import (
    TurnstileSimulator,
    read_state,
    set_door_open,
    set_emergency,
    set_fault,
    trigger,
)

HOST = "127.0.0.1"
SHIPPED = PROFILES_DIR / "turnstile-generic.yaml"


# -- helpers -------------------------------------------------------------------------------


def run(coro: Awaitable, timeout_s: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tuned(
    pulse_ms: int = 3000,
    poll_ms: int = 20,
    timeout_s: float = 0.5,
    points: dict | None = None,
    held_open_s: float = 10.0,
) -> DeviceProfile:
    """The shipped profile with test-friendly timing (and optionally other points)."""
    data = load_profile(SHIPPED).model_dump()
    data.update(
        timeout_s=timeout_s,
        timing={"unlock_pulse_ms": pulse_ms, "poll_interval_ms": poll_ms, "held_open_s": held_open_s},
    )
    if points:
        data["points"].update(points)
    return DeviceProfile.model_validate(data)


class Events:
    """An on_event sink that records what a driver reported."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def __call__(self, kind: str, attributes: dict[str, str]) -> None:
        self.seen.append((kind, attributes))

    def count(self, kind: str) -> int:
        return sum(1 for seen_kind, _ in self.seen if seen_kind == kind)

    def of(self, kind: str) -> list[dict[str, str]]:
        return [attributes for seen_kind, attributes in self.seen if seen_kind == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout_s: float = 3.0) -> None:
        await eventually(lambda: self.count(kind) >= count, timeout_s, f"{count}x {kind}; saw {self.seen}")


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


async def state_when(
    port: int, profile: DeviceProfile, condition: Callable[[dict], bool], timeout_s: float
) -> dict:
    """Poll the simulator's state over Modbus until condition holds; return that state."""
    deadline = time.monotonic() + timeout_s
    while not condition(state := await read_state(HOST, port, profile)):
        if time.monotonic() > deadline:
            raise AssertionError(f"state never matched within {timeout_s} s; last {state}")
        await asyncio.sleep(0.01)
    return state


@asynccontextmanager
async def modbus_client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    """A plain pymodbus client, to poke the simulator the way any other Modbus master would."""
    client = AsyncModbusTcpClient(HOST, port=port, timeout=0.5, retries=0, reconnect_delay=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def let_driver_poll(profile: DeviceProfile, polls: int = 5) -> None:
    """Give a driver time for a few polls, to show that nothing more gets reported."""
    await asyncio.sleep(polls * profile.timing.poll_interval_ms / 1000)


@dataclass
class Rig:
    simulator: TurnstileSimulator
    driver: TurnstileDriver
    events: Events
    port: int
    profile: DeviceProfile

    async def state(self) -> dict:
        return await read_state(HOST, self.port, self.profile)

    async def trigger(self, what: str) -> None:
        await trigger(HOST, self.port, self.profile, what)

    async def door(self, is_open: bool) -> None:
        await set_door_open(HOST, self.port, self.profile, is_open)

    async def emergency(self, active: bool) -> None:
        await set_emergency(HOST, self.port, self.profile, active)

    def kinds(self, *kinds: str) -> list[tuple[str, dict[str, str]]]:
        """The events of these kinds, in the order reported."""
        return [(kind, attributes) for kind, attributes in self.events.seen if kind in kinds]


@asynccontextmanager
async def rig(
    profile: DeviceProfile, driver_profile: DeviceProfile | None = None, name: str = "ts-1"
) -> AsyncIterator[Rig]:
    """A running simulator and a driver connected to it (online)."""
    port = free_port()
    simulator = TurnstileSimulator(profile, HOST, port)
    await simulator.start()
    events = Events()
    driver = TurnstileDriver(
        name, driver_profile or profile, HOST, port, events, backoff_initial_s=0.05, backoff_max_s=0.2
    )
    await driver.start()
    try:
        await events.wait_for("device_online")
        yield Rig(simulator, driver, events, port, profile)
    finally:
        await driver.stop()
        await simulator.stop()


# -- profiles ------------------------------------------------------------------------------


def test_shipped_profile_loads():
    profile = load_profile(SHIPPED)

    assert (profile.model, profile.vendor, profile.kind, profile.unit) == (
        "GH-TS100",
        "Gatehouse Simulator",
        "turnstile",
        1,
    )
    points = profile.points
    assert (points.unlock.table, points.unlock.address) == ("coil", 0)
    assert (points.passage_count.table, points.passage_count.address) == ("input_register", 0)
    assert (points.forced_count.table, points.forced_count.address) == ("input_register", 1)
    assert (points.fault_code.table, points.fault_code.address) == ("holding_register", 0)
    assert (points.emergency_input.table, points.emergency_input.address) == ("discrete_input", 0)
    assert (points.door_open.table, points.door_open.address) == ("discrete_input", 1)
    assert (points.free_exit.table, points.free_exit.address) == ("coil", 2)
    timing = profile.timing
    assert (timing.unlock_pulse_ms, timing.poll_interval_ms, timing.held_open_s) == (3000, 50, 10.0)
    simulation = profile.simulation
    assert (simulation.passage_trigger.table, simulation.passage_trigger.address) == ("coil", 100)
    assert (simulation.forced_trigger.table, simulation.forced_trigger.address) == ("coil", 101)
    assert (simulation.unlock_count.table, simulation.unlock_count.address) == ("input_register", 10)
    assert (simulation.door_open_trigger.table, simulation.door_open_trigger.address) == ("coil", 102)
    assert (simulation.emergency_trigger.table, simulation.emergency_trigger.address) == ("coil", 103)


def _without_alarm_points(data: dict) -> dict:
    for role in ("emergency_input", "door_open", "free_exit"):
        del data["points"][role]
    for role in ("door_open_trigger", "emergency_trigger"):
        del data["simulation"][role]
    del data["timing"]["held_open_s"]
    return data


def test_profile_without_the_optional_points_is_valid():
    profile = DeviceProfile.model_validate(_without_alarm_points(_shipped_data()))

    points = profile.points
    assert (points.emergency_input, points.door_open, points.free_exit) == (None, None, None)
    assert (profile.simulation.door_open_trigger, profile.simulation.emergency_trigger) == (None, None)
    assert profile.timing.held_open_s == 10.0


def _shipped_data() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def _unlock_in_holding_register(data):
    data["points"]["unlock"]["table"] = "holding_register"


def _without_forced_count(data):
    del data["points"]["forced_count"]


def _with_misspelt_field(data):
    data["points"]["unlok"] = data["points"].pop("unlock")


def _with_address_out_of_range(data):
    data["points"]["passage_count"]["address"] = 65536


def _with_duplicate_point(data):
    data["simulation"]["forced_trigger"] = {"table": "coil", "address": 0}


def _with_unit_out_of_range(data):
    data["unit"] = 248


def _with_held_open_s_zero(data):
    data["timing"]["held_open_s"] = 0


def _with_held_open_s_as_text(data):
    data["timing"]["held_open_s"] = "10s"


def _with_free_exit_in_discrete_input(data):
    data["points"]["free_exit"]["table"] = "discrete_input"


def _with_door_trigger_but_no_door_open(data):
    del data["points"]["door_open"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (_unlock_in_holding_register, "points.unlock.table", "Input should be 'coil'"),
        (_without_forced_count, "points.forced_count", "Field required"),
        (_with_misspelt_field, "points.unlok", "Extra inputs are not permitted"),
        (
            _with_address_out_of_range,
            "points.passage_count.address",
            "Input should be less than or equal to 65535",
        ),
        (_with_duplicate_point, "simulation.forced_trigger", "coil 0 is already used by points.unlock"),
        (_with_unit_out_of_range, "unit", "Input should be less than or equal to 247"),
        (_with_held_open_s_zero, "timing.held_open_s", "Input should be greater than 0"),
        (_with_held_open_s_as_text, "timing.held_open_s", "Input should be a valid number"),
        (_with_free_exit_in_discrete_input, "points.free_exit.table", "Input should be 'coil'"),
        (
            _with_door_trigger_but_no_door_open,
            "simulation.door_open_trigger",
            "needs points.door_open, which the profile does not have",
        ),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_bad_profile_names_file_and_field(tmp_path: Path, change, field, message):
    data = _shipped_data()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    with pytest.raises(ProfileError) as caught:
        load_profile(path)

    assert f"{path}: {field}: {message}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: GH-TS100\npoints: {unlock: {table: coil, address: 0}\n", "invalid YAML: line 3, column 1"),
        ("model: GH-TS100\nmodel: GH-TS200\n", "invalid YAML: line 2, column 1: duplicate key 'model'"),
        ("- model: GH-TS100\n", "top level must be a mapping of profile fields, found a list"),
        ("", "top level must be a mapping of profile fields, found nothing"),
    ],
    ids=["syntax-error", "duplicate-key", "top-level-list", "empty-file"],
)
def test_unusable_profile_file_names_the_file(tmp_path: Path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(ProfileError, match=f"^{path}: {message}"):
        load_profile(path)


def test_missing_profile_file_names_the_file(tmp_path: Path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(ProfileError, match=f"^{path}: cannot read: No such file"):
        load_profile(path)


# -- driver arithmetic ---------------------------------------------------------------------


def test_counter_increments_across_the_16_bit_wrap():
    assert counter_increments(7, 7) == 0
    assert counter_increments(7, 9) == 2
    assert counter_increments(65535, 0) == 1
    assert counter_increments(65534, 1) == 3
    assert counter_increments(9, 2) is None  # went backwards: the controller reset its counters


def test_polled_points_are_read_in_as_few_requests_as_possible():
    points = load_profile(SHIPPED).points
    reads = plan_register_reads(
        {role: getattr(points, role) for role in ("passage_count", "forced_count", "fault_code")}
    )

    assert reads == [
        RegisterRead("holding_register", 0, ("fault_code",)),
        RegisterRead("input_register", 0, ("passage_count", "forced_count")),
    ]


def test_polled_inputs_are_read_in_one_request():
    points = load_profile(SHIPPED).points
    reads = plan_register_reads({role: getattr(points, role) for role in ("door_open", "emergency_input")})

    assert reads == [RegisterRead("discrete_input", 0, ("emergency_input", "door_open"))]


# -- simulator and driver over Modbus TCP --------------------------------------------------


def test_simulator_relocks_by_itself_after_its_pulse():
    profile = tuned(pulse_ms=300)

    async def scenario():
        port = free_port()
        simulator = TurnstileSimulator(profile, HOST, port)
        await simulator.start()
        try:
            async with modbus_client(port) as client:
                assert not (await client.write_coil(0, True, device_id=profile.unit)).isError()
            unlocked_at = time.monotonic()
            assert await read_state(HOST, port, profile) == {
                "unlocked": True,
                "passage_count": 0,
                "forced_count": 0,
                "fault_code": 0,
                "unlock_count": 1,
                "free_exit": False,
                "door_open": False,
                "emergency_input": False,
            }
            await state_when(port, profile, lambda state: not state["unlocked"], timeout_s=2.0)
            assert time.monotonic() - unlocked_at >= 0.28
        finally:
            await simulator.stop()

    run(scenario())


def test_driver_unlock_pulses_the_coil_and_relocks_it_itself():
    # The controller's own pulse is long, so the relock seen here can only come from the driver.
    async def scenario():
        async with rig(tuned(pulse_ms=10_000), driver_profile=tuned(pulse_ms=300)) as ts:
            await ts.driver.unlock()
            unlocked_at = time.monotonic()

            state = await ts.state()
            assert state["unlocked"] is True
            assert state["unlock_count"] == 1

            await state_when(ts.port, ts.profile, lambda state: not state["unlocked"], timeout_s=2.0)
            assert time.monotonic() - unlocked_at >= 0.28
            assert (await ts.state())["unlock_count"] == 1
            assert ts.events.count("passage") == 0

    run(scenario())


def test_newer_unlock_restarts_the_drivers_pulse():
    async def scenario():
        async with rig(tuned(pulse_ms=10_000), driver_profile=tuned(pulse_ms=600)) as ts:
            await ts.driver.unlock()
            await asyncio.sleep(0.3)
            await ts.driver.unlock()
            second_unlock_at = time.monotonic()

            await asyncio.sleep(0.45)  # past the first pulse's end (0.6 s), before the second's (0.9 s)
            state = await ts.state()
            assert state["unlocked"] is True
            assert state["unlock_count"] == 1  # still unlocked: no new rising edge

            await state_when(ts.port, ts.profile, lambda state: not state["unlocked"], timeout_s=2.0)
            assert time.monotonic() - second_unlock_at >= 0.58

    run(scenario())


def test_passage_while_unlocked_is_reported_once_and_relocks_at_once():
    async def scenario():
        async with rig(tuned(pulse_ms=3000)) as ts:
            await ts.driver.unlock()
            await ts.trigger("passage")

            state = await ts.state()
            assert state["unlocked"] is False  # relocked by the passage, not by the 3 s pulse
            assert state["passage_count"] == 1

            await ts.events.wait_for("passage")
            await let_driver_poll(ts.profile)
            assert ts.events.count("passage") == 1
            assert ts.events.of("passage") == [{}]

    run(scenario())


def test_passage_while_locked_is_blocked():
    async def scenario():
        async with rig(tuned()) as ts:
            await ts.trigger("passage")

            state = await ts.state()
            assert state["passage_count"] == 0
            assert state["unlocked"] is False
            await let_driver_poll(ts.profile)
            assert ts.events.count("passage") == 0

    run(scenario())


def test_forced_turnstile_is_reported_as_door_forced():
    async def scenario():
        async with rig(tuned()) as ts:
            await ts.trigger("forced")
            await ts.trigger("forced")

            assert (await ts.state())["forced_count"] == 2
            await ts.events.wait_for("door_forced", count=2)
            await let_driver_poll(ts.profile)
            assert ts.events.count("door_forced") == 2
            assert ts.events.count("passage") == 0

    run(scenario())


def test_triggers_read_back_as_zero():
    async def scenario():
        async with rig(tuned()) as ts:
            await ts.driver.unlock()
            await ts.trigger("passage")
            await ts.trigger("forced")

            async with modbus_client(ts.port) as client:
                response = await client.read_coils(100, count=2, device_id=ts.profile.unit)
            assert response.bits[:2] == [False, False]
            state = await ts.state()
            assert (state["passage_count"], state["forced_count"]) == (1, 1)

    run(scenario())


def test_fault_code_changes_are_reported():
    async def scenario():
        async with rig(tuned()) as ts:
            await set_fault(HOST, ts.port, ts.profile, 7)
            await ts.events.wait_for("device_fault")
            await set_fault(HOST, ts.port, ts.profile, 9)
            await ts.events.wait_for("device_fault", count=2)
            await set_fault(HOST, ts.port, ts.profile, 0)
            await ts.events.wait_for("device_fault_cleared")
            await let_driver_poll(ts.profile)

            faults = [
                (kind, attributes) for kind, attributes in ts.events.seen if kind.startswith("device_fault")
            ]
            assert faults == [
                ("device_fault", {"fault_code": "7"}),
                ("device_fault", {"fault_code": "9"}),
                ("device_fault_cleared", {}),
            ]

    run(scenario())


def test_passage_counter_wraps_at_16_bits():
    # Same device with its passage counter in a holding register, so the test can preset it.
    profile = tuned(points={"passage_count": {"table": "holding_register", "address": 1}})

    async def scenario():
        async with rig(profile) as ts:
            async with modbus_client(ts.port) as client:
                assert not (await client.write_register(1, 65535, device_id=profile.unit)).isError()
            await let_driver_poll(profile)  # a jump backwards-by-modulo is a reset: new baseline, no events
            assert ts.events.count("passage") == 0

            await ts.driver.unlock()
            await ts.trigger("passage")

            assert (await ts.state())["passage_count"] == 0
            await ts.events.wait_for("passage")
            await let_driver_poll(profile)
            assert ts.events.count("passage") == 1

    run(scenario())


def test_emergency_input_reads_inactive():
    async def scenario():
        async with rig(tuned()) as ts:
            assert await ts.driver.read_emergency() is False

    run(scenario())


def test_unplugged_turnstile_goes_offline_once_and_does_not_hold_up_another():
    profile = tuned(pulse_ms=3000)

    async def scenario():
        async with rig(profile, name="ts-a") as a, rig(profile, name="ts-b") as b:
            assert a.driver.online and b.driver.online
            await a.simulator.stop()  # unplugged

            await a.events.wait_for("device_offline")
            assert not a.driver.online
            started = time.monotonic()
            with pytest.raises(DeviceOffline):
                await a.driver.unlock()
            assert time.monotonic() - started < 1.0

            # The other turnstile keeps working while ts-a's driver retries in the background.
            await b.trigger("forced")
            await b.events.wait_for("door_forced", timeout_s=0.5)
            await b.driver.unlock()
            assert (await b.state())["unlocked"] is True
            await asyncio.sleep(0.6)  # several reconnect attempts (backoff 0.05 .. 0.2 s)
            assert a.events.count("device_offline") == 1
            assert a.events.of("device_offline")[0]["error"]

            replugged = TurnstileSimulator(profile, HOST, a.port)
            await replugged.start()
            try:
                await a.events.wait_for("device_online", count=2)
                assert a.driver.online
                await a.trigger("forced")
                await a.events.wait_for("door_forced")
                await a.driver.unlock()
                assert (await a.state())["unlock_count"] == 1
                assert a.events.count("device_offline") == 1
                assert a.events.count("device_online") == 2
            finally:
                await replugged.stop()

    run(scenario())


def test_turnstile_unreachable_from_the_start_is_reported_then_comes_online():
    profile = tuned()

    async def scenario():
        port = free_port()
        events = Events()
        driver = TurnstileDriver(
            "ts-late", profile, HOST, port, events, backoff_initial_s=0.05, backoff_max_s=0.1
        )
        await driver.start()
        simulator = TurnstileSimulator(profile, HOST, port)
        try:
            await events.wait_for("device_offline")
            with pytest.raises(DeviceOffline):
                await driver.unlock()
            await asyncio.sleep(0.3)  # a few failed retries
            assert [kind for kind, _ in events.seen] == ["device_offline"]
            assert f"{HOST}:{port}" in events.of("device_offline")[0]["error"]

            await simulator.start()
            await events.wait_for("device_online")
            await driver.unlock()
            assert (await read_state(HOST, port, profile))["unlocked"] is True
        finally:
            await driver.stop()
            await simulator.stop()

    run(scenario())


def test_unlock_right_after_start_waits_for_the_first_connection():
    profile = tuned()

    async def scenario():
        port = free_port()
        simulator = TurnstileSimulator(profile, HOST, port)
        await simulator.start()
        events = Events()
        driver = TurnstileDriver("ts-boot", profile, HOST, port, events)
        try:
            await driver.start()
            await driver.unlock()          # the box has just booted: the first card must work
            assert (await read_state(HOST, port, profile))["unlock_count"] == 1
            assert events.count("device_online") == 1
        finally:
            await driver.stop()
            await simulator.stop()

    run(scenario())


def test_silent_turnstile_times_out_without_slowing_another():
    silent_profile = tuned(timeout_s=0.4)

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(256):  # accepts requests, never answers
            pass
        writer.close()

    async def scenario():
        silent_server = await asyncio.start_server(swallow, HOST, 0)
        silent_port = silent_server.sockets[0].getsockname()[1]
        silent_events = Events()
        silent = TurnstileDriver(
            "ts-silent",
            silent_profile,
            HOST,
            silent_port,
            silent_events,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        )
        try:
            async with rig(tuned(), name="ts-ok") as ok:
                await silent.start()
                # While the silent device's requests hang until their timeout, the other one's events flow promptly.
                for expected in range(1, 6):
                    await ok.trigger("forced")
                    await ok.events.wait_for("door_forced", count=expected, timeout_s=0.25)
                    await asyncio.sleep(0.05)
                await silent_events.wait_for("device_offline", timeout_s=2.0)
                assert "no response" in silent_events.of("device_offline")[0]["error"]
                with pytest.raises(DeviceOffline):
                    await silent.unlock()
                await asyncio.sleep(0.5)
                assert [kind for kind, _ in silent_events.seen] == ["device_offline"]
        finally:
            await silent.stop()
            silent_server.close()
            await silent_server.wait_closed()

    run(scenario())


# -- emergency input, held-open door and free exit -----------------------------------------


def test_simulator_inputs_follow_their_triggers_and_keep_their_level_over_a_restart():
    profile = tuned()

    async def scenario():
        port = free_port()
        simulator = TurnstileSimulator(profile, HOST, port)
        await simulator.start()
        try:
            await set_door_open(HOST, port, profile, True)
            await set_emergency(HOST, port, profile, True)
            async with modbus_client(port) as client:
                assert not (await client.write_coil(2, True, device_id=profile.unit)).isError()  # free_exit
                inputs = await client.read_discrete_inputs(0, count=2, device_id=profile.unit)
                triggers = await client.read_coils(102, count=2, device_id=profile.unit)
            assert inputs.bits[:2] == [True, True]
            assert triggers.bits[:2] == [True, True]  # level triggers read back as set
            state = await read_state(HOST, port, profile)
            assert (state["door_open"], state["emergency_input"], state["free_exit"]) == (True, True, True)

            await simulator.stop()  # power cycle: wired inputs keep their level, coils start at 0
            await simulator.start()
            state = await read_state(HOST, port, profile)
            assert (state["door_open"], state["emergency_input"], state["free_exit"]) == (True, True, False)

            await set_door_open(HOST, port, profile, False)
            await set_emergency(HOST, port, profile, False)
            state = await read_state(HOST, port, profile)
            assert (state["door_open"], state["emergency_input"]) == (False, False)
        finally:
            await simulator.stop()

    run(scenario())


def test_emergency_input_changes_are_reported():
    async def scenario():
        async with rig(tuned()) as ts:
            await ts.emergency(True)
            await ts.events.wait_for("emergency_input_on")
            assert await ts.driver.read_emergency() is True
            await ts.emergency(False)
            await ts.events.wait_for("emergency_input_off")
            await ts.emergency(True)
            await ts.events.wait_for("emergency_input_on", count=2)
            await let_driver_poll(ts.profile)

            assert ts.kinds("emergency_input_on", "emergency_input_off") == [
                ("emergency_input_on", {}),
                ("emergency_input_off", {}),
                ("emergency_input_on", {}),
            ]

    run(scenario())


def test_emergency_input_active_at_first_connection_is_reported_once():
    profile = tuned()

    async def scenario():
        port = free_port()
        simulator = TurnstileSimulator(profile, HOST, port)
        await simulator.start()
        events = Events()
        driver = TurnstileDriver(
            "ts-fire", profile, HOST, port, events, backoff_initial_s=0.05, backoff_max_s=0.2
        )
        try:
            await set_emergency(HOST, port, profile, True)  # the fire panel tripped before the agent started
            await driver.start()
            await events.wait_for("emergency_input_on")
            assert [kind for kind, _ in events.seen] == ["device_online", "emergency_input_on"]

            await simulator.stop()  # the controller restarts; its input is still active
            await events.wait_for("device_offline")
            await simulator.start()
            await events.wait_for("device_online", count=2)
            await let_driver_poll(profile)
            assert events.count("emergency_input_on") == 1  # unchanged across the reconnection

            await set_emergency(HOST, port, profile, False)
            await events.wait_for("emergency_input_off")
        finally:
            await driver.stop()
            await simulator.stop()

    run(scenario())


def test_door_held_open_is_reported_once_then_its_closing():
    profile = tuned(held_open_s=0.3)

    async def scenario():
        async with rig(profile) as ts:
            await ts.door(True)
            opened_at = time.monotonic()
            await ts.events.wait_for("door_held_open")
            assert time.monotonic() - opened_at >= 0.3
            held_s = float(ts.events.of("door_held_open")[0]["held_s"])
            assert 0.3 <= held_s < 0.6
            await let_driver_poll(profile)
            assert ts.events.count("door_held_open") == 1  # once per opening, not once per poll

            await ts.door(False)
            await ts.events.wait_for("door_closed")
            await let_driver_poll(profile)
            assert ts.kinds("door_held_open", "door_closed") == [
                ("door_held_open", {"held_s": ts.events.of("door_held_open")[0]["held_s"]}),
                ("door_closed", {"held_s": ts.events.of("door_closed")[0]["held_s"]}),
            ]
            assert float(ts.events.of("door_closed")[0]["held_s"]) >= held_s

    run(scenario())


def test_short_door_openings_report_nothing():
    # Two openings of 0.25 s each: longer than held_open_s together, but neither on its own.
    profile = tuned(held_open_s=0.4)

    async def scenario():
        async with rig(profile) as ts:
            for _ in range(2):
                await ts.door(True)
                await asyncio.sleep(0.25)
                await ts.door(False)
                await let_driver_poll(profile)

            assert ts.kinds("door_held_open", "door_closed") == []

    run(scenario())


def test_free_exit_lets_a_passage_through_while_locked():
    async def scenario():
        async with rig(tuned()) as ts:
            assert ts.driver.free_exit is False
            await ts.driver.set_free_exit(True)
            assert ts.driver.free_exit is True
            state = await ts.state()
            assert (state["free_exit"], state["unlocked"]) == (True, False)

            await ts.trigger("passage")  # someone walks out, nobody unlocked
            assert (await ts.state())["passage_count"] == 1
            await ts.events.wait_for("passage")

            await ts.driver.set_free_exit(False)
            assert ts.driver.free_exit is False
            await ts.trigger("passage")
            state = await ts.state()
            assert (state["free_exit"], state["passage_count"]) == (False, 1)  # blocked again
            await let_driver_poll(ts.profile)
            assert ts.events.count("passage") == 1

    run(scenario())


def test_free_exit_is_written_again_after_the_controller_restarts():
    async def scenario():
        async with rig(tuned()) as ts:
            await ts.driver.set_free_exit(True)
            await ts.simulator.stop()  # the controller reboots mid-evacuation; its coils come back 0
            await ts.events.wait_for("device_offline")
            await ts.simulator.start()

            await ts.events.wait_for("device_online", count=2)
            assert (await ts.state())["free_exit"] is True  # written before device_online
            await ts.trigger("passage")
            assert (await ts.state())["passage_count"] == 1

    run(scenario())


def test_set_free_exit_on_unreachable_turnstile_raises_and_is_applied_on_connection():
    profile = tuned()

    async def scenario():
        port = free_port()
        events = Events()
        driver = TurnstileDriver(
            "ts-away", profile, HOST, port, events, backoff_initial_s=0.05, backoff_max_s=0.1
        )
        await driver.start()
        simulator = TurnstileSimulator(profile, HOST, port)
        try:
            await events.wait_for("device_offline")
            started = time.monotonic()
            with pytest.raises(DeviceOffline):
                await driver.set_free_exit(True)
            assert time.monotonic() - started < 1.0
            assert driver.free_exit is True  # remembered for when the controller comes back

            await simulator.start()
            await events.wait_for("device_online")
            assert (await read_state(HOST, port, profile))["free_exit"] is True
        finally:
            await driver.stop()
            await simulator.stop()

    run(scenario())


def test_turnstile_without_the_optional_points():
    profile = DeviceProfile.model_validate(_without_alarm_points(tuned().model_dump()))

    async def scenario():
        async with rig(profile) as ts:
            with pytest.raises(LookupError, match="no free_exit"):
                await ts.driver.set_free_exit(True)
            with pytest.raises(LookupError, match="no emergency_input"):
                await ts.driver.read_emergency()
            with pytest.raises(ProfileError, match="no simulation.door_open_trigger"):
                await ts.door(True)
            assert ts.driver.free_exit is False
            assert set(await ts.state()) == {
                "unlocked",
                "passage_count",
                "forced_count",
                "fault_code",
                "unlock_count",
            }
            await ts.trigger("forced")  # polling goes on as before
            await ts.events.wait_for("door_forced")

    run(scenario())
