"""Device profiles: which Modbus point does what on a given device model.

A profile is a YAML file under ``edge/profiles/`` in the spirit of EdgeX device profiles: a new
vendor is a new file, not new code. Profiles are validated strictly (unknown keys, wrong tables,
out-of-range addresses, two roles on one point, duplicate YAML keys all fail), and every error
names the file and the dotted field, e.g.::

    edge/profiles/x.yaml: points.unlock.table: Input should be 'coil'
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


# Roles narrow the tables they accept, so a misplaced point fails with a message naming the allowed ones.
class CoilPoint(Point):
    table: Literal["coil"]


class RegisterPoint(Point):
    table: Literal["input_register", "holding_register"]


class InputRegisterPoint(Point):
    table: Literal["input_register"]


class BinaryInputPoint(Point):
    table: Literal["discrete_input", "coil"]


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


class DeviceProfile(_Section):
    model: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    kind: Literal["turnstile"]
    unit: int = Field(ge=1, le=247)
    """Modbus device id (unit id / slave address)."""
    timeout_s: float = Field(default=1.0, gt=0)
    points: TurnstilePoints
    timing: Timing = Timing()
    simulation: SimulationPoints | None = None

    def named_points(self) -> dict[str, Point]:
        """Every point in the profile by dotted name, e.g. ``points.unlock``."""
        named: dict[str, Point] = {}
        for section_name in ("points", "simulation"):
            section = getattr(self, section_name)
            if section is None:
                continue
            for role in type(section).model_fields:
                point = getattr(section, role)
                if point is not None:
                    named[f"{section_name}.{role}"] = point
        return named

    @model_validator(mode="after")
    def _points_do_not_overlap(self) -> DeviceProfile:
        owner: dict[tuple[str, int], str] = {}
        for name, point in self.named_points().items():
            key = (point.table, point.address)
            if key in owner:
                raise PydanticCustomError(
                    "duplicate_point",
                    "{name}: {table} {address} is already used by {other}",
                    {"name": name, "table": point.table, "address": point.address, "other": owner[key]},
                )
            owner[key] = name
        return self

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


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate one profile file; raise ProfileError naming the file and the field."""
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
    try:
        return DeviceProfile.model_validate(document)
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
