import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Device(_message.Message):
    __slots__ = ("device_id", "kind", "gate_id", "model")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GATE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    kind: str
    gate_id: str
    model: str
    def __init__(self, device_id: _Optional[str] = ..., kind: _Optional[str] = ..., gate_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("site_id", "software_version", "devices", "agent_time")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    AGENT_TIME_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    software_version: str
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    agent_time: _timestamp_pb2.Timestamp
    def __init__(self, site_id: _Optional[str] = ..., software_version: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., agent_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("site_id", "server_time", "latest_version", "epoch")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    server_time: _timestamp_pb2.Timestamp
    latest_version: int
    epoch: str
    def __init__(self, site_id: _Optional[str] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_version: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("cursor", "follow", "epoch")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    follow: bool
    epoch: str
    def __init__(self, cursor: _Optional[int] = ..., follow: _Optional[bool] = ..., epoch: _Optional[str] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("card_number", "person_id", "person_name", "status", "valid_from", "valid_until", "gate_ids", "group_ids", "person_kind", "max_uses", "uses")
    CARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    GATE_IDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    PERSON_KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    card_number: str
    person_id: str
    person_name: str
    status: str
    valid_from: int
    valid_until: int
    gate_ids: _containers.RepeatedScalarFieldContainer[str]
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    person_kind: str
    max_uses: int
    uses: int
    def __init__(self, card_number: _Optional[str] = ..., person_id: _Optional[str] = ..., person_name: _Optional[str] = ..., status: _Optional[str] = ..., valid_from: _Optional[int] = ..., valid_until: _Optional[int] = ..., gate_ids: _Optional[_Iterable[str]] = ..., group_ids: _Optional[_Iterable[str]] = ..., person_kind: _Optional[str] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ...) -> None: ...

class AccessGroup(_message.Message):
    __slots__ = ("group_id", "gate_ids", "time_profile_id")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_IDS_FIELD_NUMBER: _ClassVar[int]
    TIME_PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    gate_ids: _containers.RepeatedScalarFieldContainer[str]
    time_profile_id: str
    def __init__(self, group_id: _Optional[str] = ..., gate_ids: _Optional[_Iterable[str]] = ..., time_profile_id: _Optional[str] = ...) -> None: ...

class Period(_message.Message):
    __slots__ = ("day", "start_minute", "end_minute")
    DAY_FIELD_NUMBER: _ClassVar[int]
    START_MINUTE_FIELD_NUMBER: _ClassVar[int]
    END_MINUTE_FIELD_NUMBER: _ClassVar[int]
    day: int
    start_minute: int
    end_minute: int
    def __init__(self, day: _Optional[int] = ..., start_minute: _Optional[int] = ..., end_minute: _Optional[int] = ...) -> None: ...

class TimeProfile(_message.Message):
    __slots__ = ("profile_id", "periods")
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    periods: _containers.RepeatedCompositeFieldContainer[Period]
    def __init__(self, profile_id: _Optional[str] = ..., periods: _Optional[_Iterable[_Union[Period, _Mapping]]] = ...) -> None: ...

class Zone(_message.Message):
    __slots__ = ("zone_id", "anti_passback", "timed_minutes", "reset_minute", "entry_gate_ids", "exit_gate_ids")
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    ANTI_PASSBACK_FIELD_NUMBER: _ClassVar[int]
    TIMED_MINUTES_FIELD_NUMBER: _ClassVar[int]
    RESET_MINUTE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_GATE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXIT_GATE_IDS_FIELD_NUMBER: _ClassVar[int]
    zone_id: str
    anti_passback: str
    timed_minutes: int
    reset_minute: int
    entry_gate_ids: _containers.RepeatedScalarFieldContainer[str]
    exit_gate_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, zone_id: _Optional[str] = ..., anti_passback: _Optional[str] = ..., timed_minutes: _Optional[int] = ..., reset_minute: _Optional[int] = ..., entry_gate_ids: _Optional[_Iterable[str]] = ..., exit_gate_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class QrKey(_message.Message):
    __slots__ = ("key_id", "public_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class SiteSettings(_message.Message):
    __slots__ = ("timezone", "holidays", "emergency", "emergency_reason", "qr_keys")
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    HOLIDAYS_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_REASON_FIELD_NUMBER: _ClassVar[int]
    QR_KEYS_FIELD_NUMBER: _ClassVar[int]
    timezone: str
    holidays: _containers.RepeatedScalarFieldContainer[str]
    emergency: bool
    emergency_reason: str
    qr_keys: _containers.RepeatedCompositeFieldContainer[QrKey]
    def __init__(self, timezone: _Optional[str] = ..., holidays: _Optional[_Iterable[str]] = ..., emergency: _Optional[bool] = ..., emergency_reason: _Optional[str] = ..., qr_keys: _Optional[_Iterable[_Union[QrKey, _Mapping]]] = ...) -> None: ...

class VehicleRight(_message.Message):
    __slots__ = ("lot_id", "plate", "kind", "valid_from", "valid_until", "grace_days", "free_minutes", "fixed_space", "holder")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    PLATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    GRACE_DAYS_FIELD_NUMBER: _ClassVar[int]
    FREE_MINUTES_FIELD_NUMBER: _ClassVar[int]
    FIXED_SPACE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    plate: str
    kind: str
    valid_from: str
    valid_until: str
    grace_days: int
    free_minutes: int
    fixed_space: bool
    holder: str
    def __init__(self, lot_id: _Optional[str] = ..., plate: _Optional[str] = ..., kind: _Optional[str] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ..., grace_days: _Optional[int] = ..., free_minutes: _Optional[int] = ..., fixed_space: _Optional[bool] = ..., holder: _Optional[str] = ...) -> None: ...

class ParkingLot(_message.Message):
    __slots__ = ("lot_id", "timezone", "shared_capacity", "tariff_json", "tolerate_province", "exit_window_minutes")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    SHARED_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    TARIFF_JSON_FIELD_NUMBER: _ClassVar[int]
    TOLERATE_PROVINCE_FIELD_NUMBER: _ClassVar[int]
    EXIT_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    timezone: str
    shared_capacity: int
    tariff_json: str
    tolerate_province: bool
    exit_window_minutes: int
    def __init__(self, lot_id: _Optional[str] = ..., timezone: _Optional[str] = ..., shared_capacity: _Optional[int] = ..., tariff_json: _Optional[str] = ..., tolerate_province: _Optional[bool] = ..., exit_window_minutes: _Optional[int] = ...) -> None: ...

class Lane(_message.Message):
    __slots__ = ("lane_id", "lot_id", "direction", "policy_json")
    LANE_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    lane_id: str
    lot_id: str
    direction: str
    policy_json: str
    def __init__(self, lane_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., direction: _Optional[str] = ..., policy_json: _Optional[str] = ...) -> None: ...

class Removed(_message.Message):
    __slots__ = ("kind", "key")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("version", "credential", "group", "time_profile", "zone", "settings", "removed", "vehicle", "lot", "lane")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TIME_PROFILE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_FIELD_NUMBER: _ClassVar[int]
    LOT_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    version: int
    credential: Credential
    group: AccessGroup
    time_profile: TimeProfile
    zone: Zone
    settings: SiteSettings
    removed: Removed
    vehicle: VehicleRight
    lot: ParkingLot
    lane: Lane
    def __init__(self, version: _Optional[int] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ..., group: _Optional[_Union[AccessGroup, _Mapping]] = ..., time_profile: _Optional[_Union[TimeProfile, _Mapping]] = ..., zone: _Optional[_Union[Zone, _Mapping]] = ..., settings: _Optional[_Union[SiteSettings, _Mapping]] = ..., removed: _Optional[_Union[Removed, _Mapping]] = ..., vehicle: _Optional[_Union[VehicleRight, _Mapping]] = ..., lot: _Optional[_Union[ParkingLot, _Mapping]] = ..., lane: _Optional[_Union[Lane, _Mapping]] = ...) -> None: ...

class SyncBatch(_message.Message):
    __slots__ = ("changes", "cursor", "caught_up", "epoch")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    cursor: int
    caught_up: bool
    epoch: str
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., cursor: _Optional[int] = ..., caught_up: _Optional[bool] = ..., epoch: _Optional[str] = ...) -> None: ...

class EdgeEvent(_message.Message):
    __slots__ = ("event_id", "device_id", "gate_id", "kind", "device_seq", "device_time", "offline", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SEQ_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIME_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    device_id: str
    gate_id: str
    kind: str
    device_seq: int
    device_time: _timestamp_pb2.Timestamp
    offline: bool
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., device_id: _Optional[str] = ..., gate_id: _Optional[str] = ..., kind: _Optional[str] = ..., device_seq: _Optional[int] = ..., device_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., offline: _Optional[bool] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[EdgeEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[EdgeEvent, _Mapping]]] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("accepted_event_ids", "received_at")
    ACCEPTED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    accepted_event_ids: _containers.RepeatedScalarFieldContainer[str]
    received_at: _timestamp_pb2.Timestamp
    def __init__(self, accepted_event_ids: _Optional[_Iterable[str]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CommandsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "kind", "gate_id", "requested_by", "reason", "issued_at", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    kind: str
    gate_id: str
    requested_by: str
    reason: str
    issued_at: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, command_id: _Optional[str] = ..., kind: _Optional[str] = ..., gate_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., reason: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...
