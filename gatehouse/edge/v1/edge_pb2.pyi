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
    __slots__ = ("card_number", "person_id", "person_name", "status", "valid_from", "valid_until", "gate_ids")
    CARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    GATE_IDS_FIELD_NUMBER: _ClassVar[int]
    card_number: str
    person_id: str
    person_name: str
    status: str
    valid_from: int
    valid_until: int
    gate_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, card_number: _Optional[str] = ..., person_id: _Optional[str] = ..., person_name: _Optional[str] = ..., status: _Optional[str] = ..., valid_from: _Optional[int] = ..., valid_until: _Optional[int] = ..., gate_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("version", "credential")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    version: int
    credential: Credential
    def __init__(self, version: _Optional[int] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("command_id", "kind", "gate_id", "requested_by", "reason", "issued_at")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    kind: str
    gate_id: str
    requested_by: str
    reason: str
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, command_id: _Optional[str] = ..., kind: _Optional[str] = ..., gate_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., reason: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
