"""Barrier gate and LED display: profiles, simulators and drivers, over real Modbus TCP on loopback.

Same style as test_modbus_devices.py: no mocks, each test drives its coroutine with ``run()``, and
timing assertions poll with deadlines instead of sleeping for fixed lengths. The barrier's safety
rules (DESIGN.md "Safety") are proved against a simulator that has none of its own: it closes onto
a car if told to, and counts it in ``hits``.
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

from edge.drivers.barrier import BarrierDriver, DeviceOffline
from edge.drivers.display import DisplayDriver
from edge.drivers.turnstile import DeviceOffline as TurnstileDeviceOffline
from edge.profiles import (
    PROFILES_DIR,
    BarrierProfile,
    DeviceProfile,
    DisplayProfile,
    ProfileError,
    load_profile,
)
from edge.sim import barrier as barrier_sim
from edge.sim import display as display_sim
from edge.sim.barrier import BarrierSimulator
from edge.sim.display import DisplaySimulator

HOST = "127.0.0.1"
BARRIER = PROFILES_DIR / "barrier-generic.yaml"
DISPLAY = PROFILES_DIR / "display-generic.yaml"
TRAVEL_MS = 400  # the simulated arm's travel in most tests: quick, yet several polls long


# -- helpers -------------------------------------------------------------------------------


def run(coro: Awaitable, timeout_s: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def barrier_profile(
    poll_ms: int = 20, auto_close_s: float = 30.0, travel_timeout_s: float = 6.0, timeout_s: float = 0.5
) -> BarrierProfile:
    """The shipped barrier profile with test-friendly timing (auto-close out of the way by default)."""
    data = load_profile(BARRIER).model_dump()
    data.update(
        timeout_s=timeout_s,
        timing={
            "poll_interval_ms": poll_ms,
            "auto_close_s": auto_close_s,
            "travel_timeout_s": travel_timeout_s,
        },
    )
    return BarrierProfile.model_validate(data)


def display_profile(poll_ms: int = 20, timeout_s: float = 0.5) -> DisplayProfile:
    data = load_profile(DISPLAY).model_dump()
    data.update(timeout_s=timeout_s, timing={"poll_interval_ms": poll_ms})
    return DisplayProfile.model_validate(data)


class Events:
    """An on_event sink that records what a driver reported, with when."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.at: list[float] = []

    def __call__(self, kind: str, attributes: dict[str, str]) -> None:
        self.seen.append((kind, attributes))
        self.at.append(time.monotonic())

    def count(self, kind: str) -> int:
        return sum(1 for seen_kind, _ in self.seen if seen_kind == kind)

    def of(self, kind: str) -> list[dict[str, str]]:
        return [attributes for seen_kind, attributes in self.seen if seen_kind == kind]

    def when(self, kind: str) -> float:
        return next(at for (seen_kind, _), at in zip(self.seen, self.at, strict=True) if seen_kind == kind)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.seen]

    async def wait_for(self, kind: str, count: int = 1, timeout_s: float = 3.0) -> None:
        await eventually(lambda: self.count(kind) >= count, timeout_s, f"{count}x {kind}; saw {self.seen}")


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def modbus_client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(HOST, port=port, timeout=0.5, retries=0, reconnect_delay=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def polls(profile, count: int = 5) -> None:
    """Give a driver time for a few polls, to show that nothing (more) happens."""
    await asyncio.sleep(count * profile.timing.poll_interval_ms / 1000)


@dataclass
class BarrierRig:
    simulator: BarrierSimulator
    driver: BarrierDriver
    events: Events
    port: int
    profile: BarrierProfile

    async def state(self) -> dict:
        return await barrier_sim.read_state(HOST, self.port, self.profile)

    async def state_when(self, condition: Callable[[dict], bool], timeout_s: float = 3.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while not condition(state := await self.state()):
            if time.monotonic() > deadline:
                raise AssertionError(f"barrier state never matched within {timeout_s} s; last {state}")
            await asyncio.sleep(0.005)
        return state

    async def vehicle(self, present: bool) -> None:
        await barrier_sim.set_vehicle(HOST, self.port, self.profile, present)

    async def command(self, what: str) -> None:
        await barrier_sim.command(HOST, self.port, self.profile, what)

    async def open_and_wait(self) -> None:
        await self.driver.open()
        await self.events.wait_for("barrier_opened", count=self.events.count("barrier_opened") + 1)


@asynccontextmanager
async def barrier_rig(
    profile: BarrierProfile | None = None, travel_ms: int = TRAVEL_MS
) -> AsyncIterator[BarrierRig]:
    """A running barrier simulator (arm closed) and a driver connected to it (online)."""
    profile = profile or barrier_profile()
    port = free_port()
    simulator = BarrierSimulator(profile, HOST, port, travel_ms=travel_ms)
    await simulator.start()
    events = Events()
    driver = BarrierDriver("bg-1", profile, HOST, port, events, backoff_initial_s=0.05, backoff_max_s=0.2)
    await driver.start()
    try:
        await events.wait_for("device_online")
        await eventually(lambda: driver.state == "closed", 1.0, "the driver to see the arm closed")
        yield BarrierRig(simulator, driver, events, port, profile)
    finally:
        await driver.stop()
        await simulator.stop()


# -- profiles ------------------------------------------------------------------------------


def test_shipped_barrier_profile_loads():
    profile = load_profile(BARRIER)

    assert isinstance(profile, BarrierProfile)
    assert (profile.model, profile.kind, profile.unit, profile.timeout_s) == ("GH-BG200", "barrier", 1, 1.0)
    points = profile.points
    assert [
        (getattr(points, role).table, getattr(points, role).address) for role in type(points).model_fields
    ] == [
        ("coil", 0),
        ("coil", 1),
        ("coil", 2),
        ("discrete_input", 0),
        ("discrete_input", 1),
        ("discrete_input", 2),
        ("holding_register", 0),
    ]
    assert list(type(points).model_fields) == [
        "open",
        "close",
        "stop",
        "open_limit",
        "closed_limit",
        "loop_presence",
        "fault_code",
    ]
    timing = profile.timing
    assert (timing.poll_interval_ms, timing.auto_close_s, timing.travel_timeout_s) == (50, 2.0, 6.0)
    sim = profile.simulation
    assert (sim.vehicle_trigger.table, sim.travel_ms.table, sim.hits.table) == (
        "coil",
        "holding_register",
        "input_register",
    )


def test_barrier_timing_defaults():
    data = yaml.safe_load(BARRIER.read_text())
    del data["timing"]

    timing = BarrierProfile.model_validate(data).timing

    assert (timing.poll_interval_ms, timing.auto_close_s, timing.travel_timeout_s) == (50, 2.0, 6.0)


def test_shipped_display_profile_loads():
    profile = load_profile(DISPLAY)

    assert isinstance(profile, DisplayProfile)
    assert (profile.model, profile.kind) == ("GH-LED40", "display")
    points = profile.points
    assert (points.plate.table, points.plate.address, points.plate.registers) == ("holding_register", 0, 16)
    assert (points.fee_fen.address, points.fee_fen.span, points.fee_fen.word_order) == (16, 2, "high_first")
    assert (points.message_code.address, points.commit.table, points.commit.address) == (18, "coil", 0)
    assert profile.messages.codes() == {
        "idle": 0,
        "welcome": 1,
        "pay_at_exit": 2,
        "paid": 3,
        "lot_full": 4,
        "not_allowed": 5,
        "wait_for_cashier": 6,
        "confirm_with_guard": 7,
    }
    assert profile.no_fee == 0xFFFFFFFF


def test_each_kind_loads_its_own_schema():
    assert isinstance(load_profile(PROFILES_DIR / "turnstile-generic.yaml"), DeviceProfile)
    assert isinstance(load_profile(BARRIER, kind="barrier"), BarrierProfile)
    with pytest.raises(ProfileError, match=rf"^{BARRIER}: kind: a turnstile profile is needed here"):
        load_profile(BARRIER, kind="turnstile")


def _barrier(change):
    data = yaml.safe_load(BARRIER.read_text())
    change(data)
    return data


def _display(change):
    data = yaml.safe_load(DISPLAY.read_text())
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            _barrier(lambda d: d["timing"].update(auto_close_s=0)),
            "timing.auto_close_s",
            "Input should be greater than 0",
        ),
        (
            _barrier(lambda d: d["timing"].update(auto_close_s="2s")),
            "timing.auto_close_s",
            "Input should be a valid number",
        ),
        (
            _barrier(lambda d: d["timing"].update(travel_timeout_s=-1)),
            "timing.travel_timeout_s",
            "Input should be greater than 0",
        ),
        (_barrier(lambda d: d["points"].pop("loop_presence")), "points.loop_presence", "Field required"),
        (
            _barrier(lambda d: d["points"]["open"].update(table="discrete_input")),
            "points.open.table",
            "Input should be 'coil'",
        ),
        (
            _barrier(lambda d: d["simulation"]["vehicle_trigger"].update(address=1)),
            "simulation.vehicle_trigger",
            "coil 1 is already used by points.close",
        ),
        (
            _barrier(lambda d: d["timing"].update(held_open_s=3)),
            "timing.held_open_s",
            "Extra inputs are not permitted",
        ),
        (
            _display(lambda d: d["points"]["fee_fen"].update(address=15)),
            "points.fee_fen",
            "holding_register 15 is already used by points.plate",
        ),
        (
            _display(lambda d: d["points"]["plate"].update(address=65530)),
            "points.plate",
            "16 registers from address 65530 run past 65535",
        ),
        (
            _display(lambda d: d["points"]["plate"].pop("registers")),
            "points.plate.registers",
            "Field required",
        ),
        (
            _display(lambda d: d["messages"].update(paid=2)),
            "messages",
            "paid: code 2 is already used by pay_at_exit",
        ),
        (
            _display(lambda d: d["simulation"]["shown_plate"].update(registers=8)),
            "simulation.shown_plate",
            "has 8 registers, points.plate has 16",
        ),
        (_display(lambda d: d.update(kind="barrier")), "points.open", "Field required"),
    ],
    ids=[
        "auto_close_s-zero",
        "auto_close_s-text",
        "travel_timeout_s-negative",
        "barrier-without-loop_presence",
        "open-in-discrete-input",
        "barrier-duplicate-point",
        "turnstile-timing-in-barrier",
        "fee-overlaps-plate",
        "plate-past-the-table",
        "plate-without-size",
        "duplicate-message-code",
        "shown-plate-size",
        "display-says-barrier",
    ],
)
def test_bad_barrier_or_display_profile_names_file_and_field(tmp_path: Path, data, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))

    with pytest.raises(ProfileError) as caught:
        load_profile(path)

    assert f"{path}: {field}: {message}" in str(caught.value)


@pytest.mark.parametrize(
    ("kind_line", "message"),
    [
        ("kind: lift\n", "kind: Input should be one of 'turnstile', 'barrier', 'display', not 'lift'"),
        ("", "kind: Field required"),
    ],
    ids=["unknown-kind", "no-kind"],
)
def test_profile_kind_must_be_known(tmp_path: Path, kind_line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: X\nvendor: Y\n{kind_line}unit: 1\n")

    with pytest.raises(ProfileError, match=f"^{path}: {message}"):
        load_profile(path)


# -- barrier simulator on its own ------------------------------------------------------------


def test_simulator_arm_travels_and_closes_onto_a_car_when_told_to():
    # The simulator is a dumb controller: this is what the driver's safety rules must prevent.
    profile = barrier_profile()

    async def scenario():
        port = free_port()
        simulator = BarrierSimulator(profile, HOST, port, travel_ms=300)
        await simulator.start()
        try:
            state = await barrier_sim.read_state(HOST, port, profile)
            assert state == {
                "open_limit": False,
                "closed_limit": True,
                "loop_presence": False,
                "fault_code": 0,
                "travel_ms": 300,
                "hits": 0,
                "arm_position": 0,
                "arm_state": "closed",
            }
            await barrier_sim.command(HOST, port, profile, "open")
            started = time.monotonic()
            assert (await barrier_sim.read_state(HOST, port, profile))["arm_state"] == "opening"
            await asyncio.sleep(0.1)
            state = await barrier_sim.read_state(HOST, port, profile)
            assert (state["open_limit"], state["closed_limit"]) == (False, False)  # between the limits
            assert 0 < state["arm_position"] < 1000
            while not (await barrier_sim.read_state(HOST, port, profile))["open_limit"]:
                await asyncio.sleep(0.005)
            assert time.monotonic() - started >= 0.28
            async with modbus_client(port) as client:  # commands are momentary
                assert (await client.read_coils(0, count=3, device_id=profile.unit)).bits[:3] == [False] * 3

            await barrier_sim.set_vehicle(HOST, port, profile, True)
            await barrier_sim.command(HOST, port, profile, "close")  # no interlock in the controller
            while not (state := await barrier_sim.read_state(HOST, port, profile))["closed_limit"]:
                await asyncio.sleep(0.005)
            assert (state["loop_presence"], state["hits"], state["arm_state"]) == (True, 1, "closed")

            # A vehicle arriving while the arm is coming down is hit as well, once per movement.
            await barrier_sim.set_vehicle(HOST, port, profile, False)
            await barrier_sim.command(HOST, port, profile, "open")
            while not (await barrier_sim.read_state(HOST, port, profile))["open_limit"]:
                await asyncio.sleep(0.005)
            await barrier_sim.command(HOST, port, profile, "close")
            await asyncio.sleep(0.1)
            await barrier_sim.set_vehicle(HOST, port, profile, True)
            while not (state := await barrier_sim.read_state(HOST, port, profile))["closed_limit"]:
                await asyncio.sleep(0.005)
            assert state["hits"] == 2

            await barrier_sim.set_travel_ms(HOST, port, profile, 1000)
            await simulator.stop()  # power cycle: the world (arm, car, travel, hits) stays as it is
            await simulator.start()
            state = await barrier_sim.read_state(HOST, port, profile)
            assert (state["closed_limit"], state["loop_presence"], state["travel_ms"], state["hits"]) == (
                True,
                True,
                1000,
                2,
            )
        finally:
            await simulator.stop()

    run(scenario())


# -- barrier driver ------------------------------------------------------------------------


def test_open_reaches_the_open_limit_and_reports_barrier_opened():
    async def scenario():
        async with barrier_rig() as bg:
            assert bg.events.kinds() == ["device_online"]  # the arm's first position is a baseline
            await bg.driver.open()
            assert bg.driver.state == "opening"
            opened_at = time.monotonic()

            await bg.events.wait_for("barrier_opened")
            assert bg.events.when("barrier_opened") - opened_at >= TRAVEL_MS / 1000 - 0.02
            state = await bg.state()
            assert (state["open_limit"], state["closed_limit"], state["arm_state"]) == (True, False, "open")
            assert bg.driver.state == "open"
            await polls(bg.profile)
            assert bg.events.kinds() == ["device_online", "barrier_opened"]

            assert await bg.driver.close() is True
            await bg.events.wait_for("barrier_closed")
            assert bg.driver.state == "closed"
            assert (await bg.state())["hits"] == 0

    run(scenario())


def test_close_with_a_vehicle_on_the_loop_is_refused():
    async def scenario():
        async with barrier_rig() as bg:
            await bg.open_and_wait()
            await bg.vehicle(True)

            # Refused at once, even before a poll has seen the vehicle: close() reads the loop itself.
            assert await bg.driver.close() is False
            await bg.events.wait_for("vehicle_present")
            assert await bg.driver.close() is False
            await asyncio.sleep(TRAVEL_MS / 1000)  # a close written would have moved the arm by now
            state = await bg.state()
            assert (state["arm_state"], state["open_limit"], state["hits"]) == ("open", True, 0)
            assert bg.driver.state == "open"
            assert bg.events.count("barrier_closed") == 0

            await bg.vehicle(False)
            await bg.events.wait_for("vehicle_cleared")
            assert await bg.driver.close() is True
            await bg.events.wait_for("barrier_closed")

    run(scenario())


def test_presence_while_closing_stops_and_reopens_at_once():
    async def scenario():
        async with barrier_rig(travel_ms=600) as bg:
            await bg.open_and_wait()
            assert await bg.driver.close() is True
            # Let the arm get well under way, then a car noses in under it. Left alone, the arm
            # would reach the car (the last quarter of its travel) about 0.3 s later.
            await bg.state_when(lambda state: state["arm_position"] <= 800)
            await bg.vehicle(True)
            vehicle_at = time.monotonic()

            await bg.events.wait_for("barrier_reopened_for_safety")
            assert bg.events.of("barrier_reopened_for_safety") == [{"arm": "closing"}]
            # In the poll that saw the vehicle, before the arm could come anywhere near it.
            assert bg.events.when("barrier_reopened_for_safety") - vehicle_at < 0.15
            state = await bg.state()
            assert state["arm_state"] == "opening"
            assert state["arm_position"] > 500
            await bg.events.wait_for("barrier_opened", count=2)
            state = await bg.state()
            assert (state["arm_state"], state["hits"]) == ("open", 0)
            assert bg.events.kinds().index("vehicle_present") < bg.events.kinds().index(
                "barrier_reopened_for_safety"
            )
            assert bg.events.count("barrier_closed") == 0

    run(scenario())


def test_arm_closed_at_the_controller_is_reopened_for_a_car_too():
    # Someone presses "close" on the controller itself: the driver did not ask, but still watches.
    async def scenario():
        async with barrier_rig(travel_ms=600) as bg:
            await bg.open_and_wait()
            await bg.command("close")
            await eventually(
                lambda: bg.driver.state == "closing", 1.0, "the driver to see the arm leave open"
            )
            await bg.vehicle(True)

            await bg.events.wait_for("barrier_reopened_for_safety")
            await bg.events.wait_for("barrier_opened", count=2)
            assert (await bg.state())["hits"] == 0

    run(scenario())


def test_auto_close_once_the_vehicle_has_cleared_the_loop():
    profile = barrier_profile(auto_close_s=0.4)

    async def scenario():
        async with barrier_rig(profile) as bg:
            await bg.open_and_wait()
            await asyncio.sleep(0.6)  # longer than auto_close_s: no vehicle yet, so nothing closes
            assert (await bg.state())["arm_state"] == "open"

            await bg.vehicle(True)
            await asyncio.sleep(0.6)  # a vehicle standing on the loop keeps it open
            assert (await bg.state())["arm_state"] == "open"

            await bg.vehicle(False)
            await asyncio.sleep(0.25)
            await bg.vehicle(True)  # back before auto_close_s: the wait starts again when it leaves
            await bg.events.wait_for("vehicle_present", count=2)
            await asyncio.sleep(0.3)  # past the first wait's end
            assert (await bg.state())["arm_state"] == "open"

            await bg.vehicle(False)
            cleared_at = time.monotonic()
            await bg.state_when(lambda state: state["arm_state"] in ("closing", "closed"))
            closing_after = time.monotonic() - cleared_at
            assert 0.4 <= closing_after < 0.4 + 0.2
            await bg.events.wait_for("barrier_closed")
            assert (await bg.state())["hits"] == 0
            await asyncio.sleep(0.6)
            assert bg.events.count("barrier_closed") == 1  # auto-close happens once per open

    run(scenario())


def test_emergency_hold_keeps_the_arm_up_until_released():
    # Fire: every barrier up and kept up. A car passing does not bring it down, neither does a
    # close request nor someone closing it at the controller; released, it closes as usual.
    profile = barrier_profile(auto_close_s=0.3)

    async def scenario():
        async with barrier_rig(profile, travel_ms=200) as bg:
            await bg.driver.hold_open(True)
            await bg.state_when(lambda state: state["arm_state"] == "open")
            await bg.vehicle(True)
            await bg.vehicle(False)
            assert not await bg.driver.close()
            await asyncio.sleep(0.6)          # twice auto_close_s with the loop clear
            assert (await bg.state())["arm_state"] == "open"

            await bg.command("close")         # closed at the controller: raised again
            await bg.events.wait_for("barrier_opened", count=2)
            assert (await bg.state())["arm_state"] in ("opening", "open")

            await bg.driver.hold_open(False)
            await bg.state_when(lambda state: state["arm_state"] in ("closing", "closed"))
            await bg.events.wait_for("barrier_closed")
            assert (await bg.state())["hits"] == 0

    run(scenario())


def test_vehicle_returning_during_the_auto_close_is_let_through():
    # The auto-close has started the arm down when another car (or the same) comes back.
    profile = barrier_profile(auto_close_s=0.2)

    async def scenario():
        async with barrier_rig(profile, travel_ms=600) as bg:
            await bg.open_and_wait()
            await bg.vehicle(True)
            await bg.events.wait_for("vehicle_present")
            await bg.vehicle(False)
            await bg.state_when(lambda state: state["arm_state"] == "closing" and state["arm_position"] < 900)
            await bg.vehicle(True)

            await bg.events.wait_for("barrier_reopened_for_safety")
            await bg.events.wait_for("barrier_opened", count=2)
            await bg.vehicle(False)  # the reopen re-arms the auto-close for this vehicle
            await bg.events.wait_for("barrier_closed", timeout_s=2.0)
            assert (await bg.state())["hits"] == 0

    run(scenario())


def test_travel_timeout_is_a_fault_with_its_reason():
    profile = barrier_profile(travel_timeout_s=0.3)

    async def scenario():
        async with barrier_rig(profile, travel_ms=900) as bg:  # a slow, worn-out arm
            await bg.driver.open()
            opened_at = time.monotonic()

            await bg.events.wait_for("barrier_fault")
            assert bg.events.when("barrier_fault") - opened_at >= 0.3
            assert bg.events.of("barrier_fault") == [
                {"reason": "travel_timeout", "moving": "opening", "timeout_s": "0.3"}
            ]
            assert bg.driver.state == "opening"

            await bg.events.wait_for("barrier_opened")  # it gets there in the end
            await bg.events.wait_for("barrier_fault_cleared")
            assert bg.events.of("barrier_fault_cleared") == [{"reason": "travel_timeout"}]
            await polls(profile)
            assert bg.events.count("barrier_fault") == 1

    run(scenario())


def test_fault_code_changes_are_reported():
    async def scenario():
        async with barrier_rig() as bg:
            await barrier_sim.set_fault(HOST, bg.port, bg.profile, 7)
            await bg.events.wait_for("barrier_fault")
            await barrier_sim.set_fault(HOST, bg.port, bg.profile, 0)
            await bg.events.wait_for("barrier_fault_cleared")
            await polls(bg.profile)

            assert [
                (kind, attributes) for kind, attributes in bg.events.seen if kind.startswith("barrier_fault")
            ] == [
                ("barrier_fault", {"reason": "fault_code", "fault_code": "7"}),
                ("barrier_fault_cleared", {"reason": "fault_code"}),
            ]

    run(scenario())


def test_unplugged_barrier_goes_offline_once_and_comes_back():
    async def scenario():
        async with barrier_rig() as bg:
            assert DeviceOffline is TurnstileDeviceOffline  # one except clause serves every driver
            await bg.simulator.stop()  # unplugged
            await bg.events.wait_for("device_offline")
            assert not bg.driver.online
            assert bg.events.of("device_offline")[0]["error"]

            started = time.monotonic()
            with pytest.raises(DeviceOffline):
                await bg.driver.open()
            with pytest.raises(DeviceOffline):
                await bg.driver.close()
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.5)  # several reconnect attempts (backoff 0.05 .. 0.2 s)
            assert bg.events.count("device_offline") == 1

            await bg.simulator.start()
            await bg.events.wait_for("device_online", count=2)
            assert bg.driver.online and bg.driver.state == "closed"
            await bg.open_and_wait()
            assert bg.events.count("device_offline") == 1

    run(scenario())


def test_reconnection_never_closes_onto_a_vehicle():
    # The loop cleared, the auto-close wait was under way, then the controller dropped off; a car
    # rolled onto the loop while it was away. Back online, nothing closes until the car has left.
    profile = barrier_profile(auto_close_s=0.4)

    async def scenario():
        async with barrier_rig(profile) as bg:
            await bg.open_and_wait()
            await bg.vehicle(True)
            await bg.events.wait_for("vehicle_present")
            await bg.vehicle(False)
            await bg.events.wait_for("vehicle_cleared")

            await bg.simulator.stop()
            await bg.simulator.set_vehicle(True)  # wired inputs keep their level: served on restart
            await bg.events.wait_for("device_offline")
            await asyncio.sleep(0.4)
            await bg.simulator.start()
            await bg.events.wait_for("device_online", count=2)
            await bg.events.wait_for("vehicle_present", count=2)  # what changed during the outage

            await asyncio.sleep(0.8)  # twice auto_close_s
            state = await bg.state()
            assert (state["arm_state"], state["hits"]) == ("open", 0)

            await bg.vehicle(False)
            await bg.events.wait_for("barrier_closed", timeout_s=2.0)
            assert (await bg.state())["hits"] == 0

    run(scenario())


def test_arm_stopped_half_way_by_a_restart_is_opened_for_a_car_on_the_loop():
    async def scenario():
        async with barrier_rig(travel_ms=600) as bg:
            await bg.open_and_wait()
            assert await bg.driver.close() is True
            await bg.state_when(lambda state: state["arm_position"] <= 700)
            await bg.simulator.stop()  # power cut half-way down: the arm stops where it is
            await bg.simulator.set_vehicle(True)
            await bg.events.wait_for("device_offline")
            await bg.simulator.start()

            await bg.events.wait_for("device_online", count=2)
            await bg.events.wait_for("barrier_reopened_for_safety")
            await bg.events.wait_for("barrier_opened", count=2)
            assert (await bg.state())["hits"] == 0

    run(scenario())


# -- LED display ---------------------------------------------------------------------------


@dataclass
class DisplayRig:
    simulator: DisplaySimulator
    driver: DisplayDriver
    events: Events
    port: int
    profile: DisplayProfile

    async def state(self) -> dict:
        return await display_sim.read_state(HOST, self.port, self.profile)


@asynccontextmanager
async def display_rig() -> AsyncIterator[DisplayRig]:
    profile = display_profile()
    port = free_port()
    simulator = DisplaySimulator(profile, HOST, port)
    await simulator.start()
    events = Events()
    driver = DisplayDriver("led-1", profile, HOST, port, events, backoff_initial_s=0.05, backoff_max_s=0.2)
    await driver.start()
    try:
        await events.wait_for("device_online")
        yield DisplayRig(simulator, driver, events, port, profile)
    finally:
        await driver.stop()
        await simulator.stop()


def test_display_shows_plate_fee_and_message():
    async def scenario():
        async with display_rig() as led:
            assert await led.state() == {"plate": "", "fee_fen": 0, "message_code": 0, "shown_count": 0}

            await led.driver.show("皖A12345", 1250, "pay_at_exit")
            assert await led.state() == {
                "plate": "皖A12345",
                "fee_fen": 1250,
                "message_code": 2,
                "shown_count": 1,
            }

            await led.driver.show("粤B·D12345", 1_234_567, "paid")  # over 16 bits: both words count
            assert await led.state() == {
                "plate": "粤B·D12345",
                "fee_fen": 1_234_567,
                "message_code": 3,
                "shown_count": 2,
            }
            assert led.driver.shown == {"plate": "粤B·D12345", "fee_fen": 1_234_567, "message": "paid"}

            await led.driver.show("沪C88888", None, "confirm_with_guard")  # a shorter plate: no leftovers
            assert await led.state() == {
                "plate": "沪C88888",
                "fee_fen": None,
                "message_code": 7,
                "shown_count": 3,
            }
            await led.driver.clear()
            assert await led.state() == {"plate": "", "fee_fen": None, "message_code": 0, "shown_count": 4}

    run(scenario())


def test_display_wire_format_and_commit_latch():
    async def scenario():
        async with display_rig() as led:
            await led.driver.show("皖A12345", 0x12345, "welcome")
            async with modbus_client(led.port) as client:
                registers = (await client.read_holding_registers(0, count=19, device_id=1)).registers
                raw = "皖A12345".encode()
                assert len(raw) == 9
                assert registers[:5] == [
                    int.from_bytes(raw[i : i + 2].ljust(2, b"\0"), "big") for i in range(0, 10, 2)
                ]
                assert registers[5:16] == [0] * 11  # zero-padded
                assert registers[16:18] == [0x0001, 0x2345]  # high word first
                assert registers[18] == 1
                assert (await client.read_coils(0, count=1, device_id=1)).bits[
                    0
                ] is False  # commit is momentary

                # Registers written without a commit show nothing new: the display latches on commit.
                assert not (await client.write_registers(16, [0, 99, 5], device_id=1)).isError()
                assert await led.state() == {
                    "plate": "皖A12345",
                    "fee_fen": 0x12345,
                    "message_code": 1,
                    "shown_count": 1,
                }

    run(scenario())


def test_display_rejects_bad_input_before_writing_anything():
    async def scenario():
        async with display_rig() as led:
            ten_chinese = "京" * 10  # 30 bytes
            await led.driver.show(ten_chinese + "AB", 0, "idle")  # exactly 32 bytes fits
            assert (await led.state())["plate"] == ten_chinese + "AB"

            with pytest.raises(ValueError, match="33 bytes in UTF-8; the display holds at most 32"):
                await led.driver.show(ten_chinese + "ABC", 100, "welcome")
            with pytest.raises(ValueError, match="unknown message 'goodbye'; one of idle, welcome"):
                await led.driver.show("皖A12345", 100, "goodbye")
            with pytest.raises(ValueError, match="fee_fen must be 0 .. 4294967294, not -1"):
                await led.driver.show("皖A12345", -1, "welcome")
            with pytest.raises(TypeError, match="fee_fen must be an int"):
                await led.driver.show("皖A12345", 12.5, "welcome")
            assert await led.state() == {
                "plate": ten_chinese + "AB",
                "fee_fen": 0,
                "message_code": 0,
                "shown_count": 1,
            }
            async with modbus_client(led.port) as client:  # nothing half-written either
                assert (await client.read_holding_registers(18, count=1, device_id=1)).registers == [0]

    run(scenario())


def test_unplugged_display_goes_offline_once_and_comes_back():
    async def scenario():
        async with display_rig() as led:
            await led.simulator.stop()
            await led.events.wait_for("device_offline")
            with pytest.raises(DeviceOffline):
                await led.driver.show("皖A12345", 500, "welcome")
            with pytest.raises(ValueError):  # bad input is still a ValueError, not DeviceOffline
                await led.driver.show("皖A12345", 500, "hello")
            await asyncio.sleep(0.4)
            assert led.events.kinds() == ["device_online", "device_offline"]

            await led.simulator.start()  # it reboots blank
            await led.events.wait_for("device_online", count=2)
            await led.driver.show("皖A12345", 500, "welcome")
            assert await led.state() == {
                "plate": "皖A12345",
                "fee_fen": 500,
                "message_code": 1,
                "shown_count": 1,
            }

    run(scenario())
