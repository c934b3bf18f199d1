import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignInRequest(_message.Message):
    __slots__ = ("guard_id", "pin", "device_id", "device_time")
    GUARD_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIME_FIELD_NUMBER: _ClassVar[int]
    guard_id: str
    pin: str
    device_id: str
    device_time: _timestamp_pb2.Timestamp
    def __init__(self, guard_id: _Optional[str] = ..., pin: _Optional[str] = ..., device_id: _Optional[str] = ..., device_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignInReply(_message.Message):
    __slots__ = ("token", "expires_at", "guard_id", "guard_name", "site_id", "server_time")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    GUARD_ID_FIELD_NUMBER: _ClassVar[int]
    GUARD_NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    guard_id: str
    guard_name: str
    site_id: str
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., guard_id: _Optional[str] = ..., guard_name: _Optional[str] = ..., site_id: _Optional[str] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AssignmentsRequest(_message.Message):
    __slots__ = ("hours_ahead",)
    HOURS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    hours_ahead: int
    def __init__(self, hours_ahead: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("checkpoint_id", "name", "seq", "tag_kind", "nfc_uid", "latitude", "longitude", "radius_m")
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TAG_KIND_FIELD_NUMBER: _ClassVar[int]
    NFC_UID_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: str
    name: str
    seq: int
    tag_kind: str
    nfc_uid: str
    latitude: float
    longitude: float
    radius_m: float
    def __init__(self, checkpoint_id: _Optional[str] = ..., name: _Optional[str] = ..., seq: _Optional[int] = ..., tag_kind: _Optional[str] = ..., nfc_uid: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., radius_m: _Optional[float] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("route_id", "name", "ordered", "risk_level", "checkpoints")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORDERED_FIELD_NUMBER: _ClassVar[int]
    RISK_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    name: str
    ordered: bool
    risk_level: str
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, route_id: _Optional[str] = ..., name: _Optional[str] = ..., ordered: _Optional[bool] = ..., risk_level: _Optional[str] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class Round(_message.Message):
    __slots__ = ("round_id", "route_id", "status", "planned_start", "due_by", "grace_until", "scanned_checkpoint_ids", "assigned_to")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_START_FIELD_NUMBER: _ClassVar[int]
    DUE_BY_FIELD_NUMBER: _ClassVar[int]
    GRACE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SCANNED_CHECKPOINT_IDS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_TO_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    route_id: str
    status: str
    planned_start: _timestamp_pb2.Timestamp
    due_by: _timestamp_pb2.Timestamp
    grace_until: _timestamp_pb2.Timestamp
    scanned_checkpoint_ids: _containers.RepeatedScalarFieldContainer[str]
    assigned_to: str
    def __init__(self, round_id: _Optional[str] = ..., route_id: _Optional[str] = ..., status: _Optional[str] = ..., planned_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., due_by: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., grace_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scanned_checkpoint_ids: _Optional[_Iterable[str]] = ..., assigned_to: _Optional[str] = ...) -> None: ...

class SiteKey(_message.Message):
    __slots__ = ("key_id", "public_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class AssignmentsReply(_message.Message):
    __slots__ = ("rounds", "routes", "keys", "server_time")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[Round]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    keys: _containers.RepeatedCompositeFieldContainer[SiteKey]
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, rounds: _Optional[_Iterable[_Union[Round, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., keys: _Optional[_Iterable[_Union[SiteKey, _Mapping]]] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Scan(_message.Message):
    __slots__ = ("scan_id", "round_id", "method", "tag", "device_time", "has_location", "latitude", "longitude", "accuracy_m", "photo")
    SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIME_FIELD_NUMBER: _ClassVar[int]
    HAS_LOCATION_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_M_FIELD_NUMBER: _ClassVar[int]
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    scan_id: str
    round_id: str
    method: str
    tag: str
    device_time: _timestamp_pb2.Timestamp
    has_location: bool
    latitude: float
    longitude: float
    accuracy_m: float
    photo: bytes
    def __init__(self, scan_id: _Optional[str] = ..., round_id: _Optional[str] = ..., method: _Optional[str] = ..., tag: _Optional[str] = ..., device_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., has_location: _Optional[bool] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., accuracy_m: _Optional[float] = ..., photo: _Optional[bytes] = ...) -> None: ...

class ScanBatch(_message.Message):
    __slots__ = ("batch_id", "device_id", "device_sent_at", "scans")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SENT_AT_FIELD_NUMBER: _ClassVar[int]
    SCANS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    device_id: str
    device_sent_at: _timestamp_pb2.Timestamp
    scans: _containers.RepeatedCompositeFieldContainer[Scan]
    def __init__(self, batch_id: _Optional[str] = ..., device_id: _Optional[str] = ..., device_sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scans: _Optional[_Iterable[_Union[Scan, _Mapping]]] = ...) -> None: ...

class ScanResult(_message.Message):
    __slots__ = ("scan_id", "outcome", "reason", "detail", "round_id", "checkpoint_id", "flags")
    SCAN_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    scan_id: str
    outcome: str
    reason: str
    detail: str
    round_id: str
    checkpoint_id: str
    flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scan_id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., round_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., flags: _Optional[_Iterable[str]] = ...) -> None: ...

class ScanBatchReply(_message.Message):
    __slots__ = ("results", "received_at", "clock_skew_s")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SKEW_S_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScanResult]
    received_at: _timestamp_pb2.Timestamp
    clock_skew_s: float
    def __init__(self, results: _Optional[_Iterable[_Union[ScanResult, _Mapping]]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clock_skew_s: _Optional[float] = ...) -> None: ...

class IncidentReport(_message.Message):
    __slots__ = ("incident_id", "round_id", "checkpoint_id", "type", "severity", "text", "photo", "device_time")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIME_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    round_id: str
    checkpoint_id: str
    type: str
    severity: str
    text: str
    photo: bytes
    device_time: _timestamp_pb2.Timestamp
    def __init__(self, incident_id: _Optional[str] = ..., round_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., type: _Optional[str] = ..., severity: _Optional[str] = ..., text: _Optional[str] = ..., photo: _Optional[bytes] = ..., device_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IncidentReply(_message.Message):
    __slots__ = ("incident_id", "status", "duplicate")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    status: str
    duplicate: bool
    def __init__(self, incident_id: _Optional[str] = ..., status: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...
