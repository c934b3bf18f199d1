"""Device profiles: which Modbus point does what on a given device model.

A profile is a YAML file under ``edge/profiles/`` in the spirit of EdgeX device profiles: a new
vendor is a new file, not new code. Profiles are validated strictly (unknown keys, wrong tables,
out-of-range addresses, two roles on one point, duplicate YAML keys all fail), and every error
names the file and the dotted field, e.g.::

    edge/profiles/x.yaml: points.unlock.table: Input should be 'coil'

The top-level ``kind`` picks the schema: ``turnstile`` (``DeviceProfile``, also called
``TurnstileProfile``), ``barrier`` (``BarrierProfile``) or ``display`` (``DisplayProfile``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

PROFILES_DIR = Path(__file__).with_name("profiles")

Table = Literal["coil", "discrete_input", "holding_register", "input_register"]
Address = Annotated[int, Field(ge=0, le=65535)]


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


class _Section(BaseModel):
    # strict: YAML already yields the right types, so "5" or true where a number belongs is a typo.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class Point(_Section):
    """One Modbus data item: a table and a zero-based address in it."""

    table: Table
    address: Address

    @property
    def span(self) -> int:
        """How many consecutive addresses of its table the point occupies."""
        return 1


# Roles narrow the tables they accept, so a misplaced point fails with a message naming the allowed ones.
class CoilPoint(Point):
    table: Literal["coil"]


class RegisterPoint(Point):
    table: Literal["input_register", "holding_register"]


class InputRegisterPoint(Point):
    table: Literal["input_register"]


class BinaryInputPoint(Point):
    table: Literal["discrete_input", "coil"]


class HoldingRegisterPoint(Point):
    table: Literal["holding_register"]


class _MultiRegisterPoint(Point):
    """A value spread over consecutive registers; its last register must still be addressable."""

    @model_validator(mode="after")
    def _fits_in_the_table(self):
        if self.address + self.span - 1 > 65535:
            raise PydanticCustomError(
                "point_too_long",
                "{span} registers from address {address} run past 65535",
                {"span": self.span, "address": self.address},
            )
        return self


class RegisterBlockPoint(_MultiRegisterPoint):
    """``registers`` consecutive 16-bit registers holding bytes, first byte in the high half."""

    table: Literal["holding_register"]
    registers: int = Field(ge=1, le=123)  # 123: the most one Modbus write may carry

    @property
    def span(self) -> int:
        return self.registers


class InputRegisterBlockPoint(RegisterBlockPoint):
    table: Literal["input_register"]  # type: ignore[assignment]


class Uint32Point(_MultiRegisterPoint):
    """A 32-bit unsigned value in two consecutive registers."""

    table: Literal["holding_register"]
    word_order: Literal["high_first", "low_first"] = "high_first"

    @property
    def span(self) -> int:
        return 2


class InputUint32Point(Uint32Point):
    table: Literal["input_register"]  # type: ignore[assignment]


class TurnstilePoints(_Section):
    unlock: CoilPoint
    """Writing 1 releases the turnstile for one passage; the controller relocks on passage or timeout."""
    passage_count: RegisterPoint
    """16-bit counter, +1 on every passage (wraps at 65536)."""
    forced_count: RegisterPoint
    """16-bit counter, +1 each time the turnstile is forced."""
    fault_code: RegisterPoint
    """0 means no fault; any other value is the vendor's fault code."""
    emergency_input: BinaryInputPoint | None = None
    """1 while the fire-alarm / emergency release input is active."""
    door_open: BinaryInputPoint | None = None
    """1 while the arm / door is out of its home position (held open for ``timing.held_open_s`` is an alarm)."""
    free_exit: CoilPoint | None = None
    """Writing 1 lets the turnstile turn freely in the exit direction (fire evacuation); 0 is normal."""


class Timing(_Section):
    unlock_pulse_ms: int = Field(default=5000, ge=100, le=60000)
    poll_interval_ms: int = Field(default=100, ge=10, le=5000)
    held_open_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """How long ``door_open`` may stay 1 before the driver reports ``door_held_open``."""


class SimulationPoints(_Section):
    """Control points of the simulator, in the same Modbus address space; real devices have none."""

    passage_trigger: CoilPoint
    """Writing 1 makes a person walk through (only passes if unlocked); reads back as 0."""
    forced_trigger: CoilPoint
    """Writing 1 forces the turnstile; reads back as 0."""
    unlock_count: InputRegisterPoint
    """Counts rising edges of the unlock coil, so a test can read back that an unlock was pulsed."""
    door_open_trigger: CoilPoint | None = None
    """Writing 1 / 0 sets ``points.door_open`` to 1 / 0; reads back as the value set."""
    emergency_trigger: CoilPoint | None = None
    """Writing 1 / 0 sets ``points.emergency_input`` to 1 / 0; reads back as the value set."""


# A simulation trigger drives one of the device's points, which the profile must then have.
_TRIGGER_TARGETS = {"door_open_trigger": "door_open", "emergency_trigger": "emergency_input"}


class _Profile(_Section):
    """What every device profile has; ``kind`` picks the subclass, ``points`` and ``simulation`` its roles."""

    model: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    kind: str
    unit: int = Field(ge=1, le=247)
    """Modbus device id (unit id / slave address)."""
    timeout_s: float = Field(default=1.0, gt=0)

    def named_points(self) -> dict[str, Point]:
        """Every point in the profile by dotted name, e.g. ``points.unlock``."""
        named: dict[str, Point] = {}
        for section_name in ("points", "simulation"):
            section = getattr(self, section_name, None)
            if section is None:
                continue
            for role in type(section).model_fields:
                point = getattr(section, role)
                if point is not None:
                    named[f"{section_name}.{role}"] = point
        return named

    @model_validator(mode="after")
    def _points_do_not_overlap(self):
        owner: dict[tuple[str, int], str] = {}
        for name, point in self.named_points().items():
            for address in range(point.address, point.address + point.span):
                key = (point.table, address)
                if key in owner:
                    raise PydanticCustomError(
                        "duplicate_point",
                        "{name}: {table} {address} is already used by {other}",
                        {"name": name, "table": point.table, "address": address, "other": owner[key]},
                    )
            for address in range(point.address, point.address + point.span):
                owner[(point.table, address)] = name
        return self


class DeviceProfile(_Profile):
    """A turnstile controller's profile (``kind: turnstile``); also known as ``TurnstileProfile``."""

    kind: Literal["turnstile"]
    points: TurnstilePoints
    timing: Timing = Timing()
    simulation: SimulationPoints | None = None

    @model_validator(mode="after")
    def _triggers_have_their_points(self) -> DeviceProfile:
        if self.simulation is None:
            return self
        for trigger, target in _TRIGGER_TARGETS.items():
            if getattr(self.simulation, trigger) is not None and getattr(self.points, target) is None:
                raise PydanticCustomError(
                    "trigger_without_point",
                    "simulation.{trigger}: needs points.{target}, which the profile does not have",
                    {"trigger": trigger, "target": target},
                )
        return self


TurnstileProfile = DeviceProfile


# -- barrier gate controller -------------------------------------------------------------------


class BarrierPoints(_Section):
    open: CoilPoint
    """Writing 1 raises the arm (a momentary command: the controller acts on it)."""
    close: CoilPoint
    """Writing 1 lowers the arm. The controller does not check the loop: the edge driver must."""
    stop: CoilPoint
    """Writing 1 stops the arm where it is."""
    open_limit: BinaryInputPoint
    """1 while the arm is fully up."""
    closed_limit: BinaryInputPoint
    """1 while the arm is fully down."""
    loop_presence: BinaryInputPoint
    """1 while a vehicle is on the induction loop under the arm."""
    fault_code: RegisterPoint
    """0 means no fault; any other value is the vendor's fault code."""


class BarrierTiming(_Section):
    poll_interval_ms: int = Field(default=50, ge=10, le=5000)
    """How often the driver reads the limits, the loop and the fault code (and so how fast it reacts)."""
    auto_close_s: float = Field(default=2.0, gt=0, le=3600, allow_inf_nan=False)
    """After an open, close this long after the vehicle has cleared the loop (restarts if it comes back)."""
    travel_timeout_s: float = Field(default=6.0, gt=0, le=600, allow_inf_nan=False)
    """An arm that has not reached its limit this long after it started moving is a fault."""


class BarrierSimulationPoints(_Section):
    """Control points of the barrier simulator; real controllers have none."""

    vehicle_trigger: CoilPoint
    """Writing 1 / 0: a vehicle drives onto / leaves the loop (``points.loop_presence``); reads back the level."""
    travel_ms: HoldingRegisterPoint
    """How long the arm takes between the limits, in ms; writable at any time."""
    hits: InputRegisterPoint
    """Counts closing movements that came down onto a vehicle on the loop (should stay 0)."""
    arm_position: InputRegisterPoint | None = None
    """Where the arm is: 0 fully down .. 1000 fully up."""
    arm_state: InputRegisterPoint | None = None
    """0 closed, 1 opening, 2 open, 3 closing, 4 stopped."""


class BarrierProfile(_Profile):
    """A barrier gate controller's profile (``kind: barrier``)."""

    kind: Literal["barrier"]
    points: BarrierPoints
    timing: BarrierTiming = BarrierTiming()
    simulation: BarrierSimulationPoints | None = None


# -- LED display ---------------------------------------------------------------------------------


class DisplayPoints(_Section):
    plate: RegisterBlockPoint
    """The plate as UTF-8 bytes, two a register (first byte in the high half), zero-padded."""
    fee_fen: Uint32Point
    """The fee in fen, 32-bit unsigned; the profile's ``no_fee`` value blanks the fee line."""
    message_code: HoldingRegisterPoint
    """Which message to show; the codes are under ``messages``."""
    commit: CoilPoint
    """Writing 1 makes the display show what is in the registers now (it latches them)."""


class DisplayMessages(_Section):
    """The display's code for each message the driver can ask for."""

    idle: int = Field(default=0, ge=0, le=65535)
    welcome: int = Field(default=1, ge=0, le=65535)
    pay_at_exit: int = Field(default=2, ge=0, le=65535)
    paid: int = Field(default=3, ge=0, le=65535)
    """Paid, have a good trip."""
    lot_full: int = Field(default=4, ge=0, le=65535)
    not_allowed: int = Field(default=5, ge=0, le=65535)
    wait_for_cashier: int = Field(default=6, ge=0, le=65535)
    confirm_with_guard: int = Field(default=7, ge=0, le=65535)

    @model_validator(mode="after")
    def _codes_are_distinct(self):
        owner: dict[int, str] = {}
        for name in type(self).model_fields:
            code = getattr(self, name)
            if code in owner:
                raise PydanticCustomError(
                    "duplicate_message_code",
                    "{name}: code {code} is already used by {other}",
                    {"name": name, "code": code, "other": owner[code]},
                )
            owner[code] = name
        return self

    def codes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class DisplayTiming(_Section):
    poll_interval_ms: int = Field(default=1000, ge=10, le=60000)
    """How often the driver checks that the display still answers."""


class DisplaySimulationPoints(_Section):
    """What the simulated display shows now (latched on commit), readable over Modbus; real displays have none."""

    shown_plate: InputRegisterBlockPoint
    shown_fee_fen: InputUint32Point
    shown_message_code: InputRegisterPoint
    shown_count: InputRegisterPoint
    """+1 on every commit."""


class DisplayProfile(_Profile):
    """An LED display's profile (``kind: display``)."""

    kind: Literal["display"]
    points: DisplayPoints
    no_fee: int = Field(default=0xFFFFFFFF, ge=0, le=0xFFFFFFFF)
    """Written as ``fee_fen`` when there is no fee to show; fees must stay below it."""
    messages: DisplayMessages = DisplayMessages()
    timing: DisplayTiming = DisplayTiming()
    simulation: DisplaySimulationPoints | None = None

    @model_validator(mode="after")
    def _shown_plate_fits_the_plate(self):
        if (
            self.simulation is not None
            and self.simulation.shown_plate.registers != self.points.plate.registers
        ):
            raise PydanticCustomError(
                "shown_plate_size",
                "simulation.shown_plate: has {shown} registers, points.plate has {plate}",
                {"shown": self.simulation.shown_plate.registers, "plate": self.points.plate.registers},
            )
        return self


AnyProfile = DeviceProfile | BarrierProfile | DisplayProfile
PROFILE_KINDS: dict[str, type[_Profile]] = {
    "turnstile": DeviceProfile,
    "barrier": BarrierProfile,
    "display": DisplayProfile,
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_profile(path: str | Path, kind: str | None = None) -> AnyProfile:
    """Read and validate one profile file; raise ProfileError naming the file and the field.

    The file's ``kind`` picks the schema; with ``kind=`` given, a file of another kind is an error too.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: invalid YAML: {_describe_yaml_error(exc)}") from exc
    if not isinstance(document, dict):
        found = "nothing" if document is None else f"a {type(document).__name__}"
        raise ProfileError(f"{path}: top level must be a mapping of profile fields, found {found}")
    found_kind = document.get("kind")
    if "kind" not in document:
        raise ProfileError(f"{path}: kind: Field required")
    if not isinstance(found_kind, str) or found_kind not in PROFILE_KINDS:
        kinds = ", ".join(f"'{name}'" for name in PROFILE_KINDS)
        raise ProfileError(f"{path}: kind: Input should be one of {kinds}, not {found_kind!r}")
    if kind is not None and found_kind != kind:
        raise ProfileError(f"{path}: kind: a {kind} profile is needed here, this one is {found_kind!r}")
    try:
        return PROFILE_KINDS[found_kind].model_validate(document)
    except ValidationError as exc:
        raise ProfileError(
            "\n".join(_describe_validation_error(path, error) for error in exc.errors())
        ) from exc


def _describe_validation_error(path: str | Path, error) -> str:
    field = ".".join(str(part) for part in error["loc"])
    return f"{path}: {field}: {error['msg']}" if field else f"{path}: {error['msg']}"


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
