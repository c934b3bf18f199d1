"""The agent's site file (YAML), validated at start-up: a bad field stops the agent with the
file and the field named."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.profiles import DeviceProfile, ProfileError, load_profile


class ConfigError(ValueError):
    pass


PersonKind = Literal["resident", "staff", "contractor", "visitor"]


class DeviceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    gate_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    profile: str
    host: str
    port: int = Field(ge=1, le=65535)
    # who may still pass at this device when the site data is stale (None: the site's list)
    stale_allow_kinds: list[PersonKind] | None = None


class LaneDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: str
    host: str
    port: int = Field(ge=1, le=65535)


class LaneConfig(BaseModel):
    """A parking lane: its barrier and display; its camera sends reads or frames to the reader port."""
    model_config = ConfigDict(extra="forbid")
    lane_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    lot_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    barrier: LaneDevice
    display: LaneDevice | None = None
    camera_silence_s: float = Field(default=60.0, gt=0)   # no frame or heartbeat this long: camera offline


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site_id: str
    agent_id: str
    secret: str | None = None
    secret_file: str | None = None
    edgelink: str = "127.0.0.1:50051"
    data_dir: str
    reader_listen: str = "127.0.0.1:7101"
    outbox_alarm_at: int = Field(default=100_000, ge=1)
    upload_batch: int = Field(default=500, ge=1, le=1000)
    # Data not confirmed current for this long is stale: once the centre answers again, a
    # decision waits up to sync_wait_s for the sync to catch up; while it stays unreachable,
    # only these kinds of people pass.
    sync_grace_s: float = Field(default=300.0, gt=0)
    sync_wait_s: float = Field(default=1.0, ge=0, le=10)
    stale_allow_kinds: list[PersonKind] = ["resident", "staff"]
    devices: list[DeviceConfig] = []
    lanes: list[LaneConfig] = []


class LoadedSite:
    """The site file with paths resolved, the secret read and every device profile loaded."""

    def __init__(self, path: Path, site: SiteConfig, secret: str, profiles: dict[str, DeviceProfile],
                 lane_profiles: dict[str, tuple] | None = None):
        self.path, self.site, self.secret, self.profiles = path, site, secret, profiles
        self.lane_profiles = lane_profiles or {}     # lane_id -> (barrier profile, display profile or None)
        self.data_dir = (path.parent / site.data_dir).resolve()


def _field(loc) -> str:
    return ".".join(str(p) for p in loc)


def load_site(path: str | Path) -> LoadedSite:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        site = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {_field(err['loc'])}: {err['msg']}") from None
    if site.secret_file:
        secret_path = path.parent / site.secret_file
        try:
            secret = secret_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: secret_file: cannot read {secret_path}: {exc.strerror}") from None
    elif site.secret:
        secret = site.secret
    else:
        raise ConfigError(f"{path}: secret: give secret or secret_file")
    ids = [d.device_id for d in site.devices]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{path}: devices: device_id values must be unique")
    profiles = {}
    for i, device in enumerate(site.devices):
        profile_path = (path.parent / device.profile)
        try:
            profiles[device.device_id] = load_profile(profile_path)
        except ProfileError as exc:
            raise ConfigError(f"devices[{i}].profile: {exc}") from None
        if profiles[device.device_id].kind != "turnstile":
            raise ConfigError(f"{path}: devices[{i}].profile: a {profiles[device.device_id].kind} "
                              "(a parking lane device): put it under lanes: as a lane's barrier or display")
    if not site.devices and not site.lanes:
        raise ConfigError(f"{path}: devices: give at least one device or lane")
    lane_ids = [lane.lane_id for lane in site.lanes]
    if len(lane_ids) != len(set(lane_ids)):
        raise ConfigError(f"{path}: lanes: lane_id values must be unique")
    lane_profiles = {}
    for i, lane in enumerate(site.lanes):
        loaded = []
        for role, kind in (("barrier", "barrier"), ("display", "display")):
            device = getattr(lane, role)
            if device is None:
                loaded.append(None)
                continue
            try:
                loaded.append(load_profile(path.parent / device.profile, kind=kind))
            except ProfileError as exc:
                raise ConfigError(f"lanes[{i}].{role}.profile: {exc}") from None
        lane_profiles[lane.lane_id] = tuple(loaded)
    return LoadedSite(path, site, secret, profiles, lane_profiles)
