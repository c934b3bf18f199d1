"""Checks on what agents send, with messages that name the offending field."""
from __future__ import annotations

import re
import uuid

MAX_EVENTS_PER_BATCH = 1000
MAX_BATCH_BYTES = 1 << 20          # 1 MiB of events per call
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE = 1024
# attributes that carry a small picture: an unsure plate read's crop, base64 (the operator looks at it)
LARGE_ATTRIBUTES = {"crop_jpeg_b64": 64 << 10}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class Invalid(ValueError):
    pass


def check_id(value: str, field: str) -> None:
    if not _ID.match(value or ""):
        raise Invalid(f"{field}: {value!r} is not an id (letters, digits, _ . : -, at most 64)")


def check_batch(batch, byte_size: int) -> None:
    n = len(batch.events)
    if not 1 <= n <= MAX_EVENTS_PER_BATCH:
        raise Invalid(f"events: a batch holds 1 to {MAX_EVENTS_PER_BATCH} events, got {n}")
    if byte_size > MAX_BATCH_BYTES:
        raise Invalid(f"batch is {byte_size} bytes; at most {MAX_BATCH_BYTES} allowed")
    seen = set()
    for i, e in enumerate(batch.events):
        where = f"events[{i}]"
        try:
            if str(uuid.UUID(e.event_id)) != e.event_id.lower():
                raise ValueError
        except ValueError:
            raise Invalid(f"{where}.event_id: {e.event_id!r} is not a UUID") from None
        if e.event_id in seen:
            raise Invalid(f"{where}.event_id: {e.event_id} appears twice in the batch")
        seen.add(e.event_id)
        check_id(e.device_id, f"{where}.device_id")
        if e.gate_id:
            check_id(e.gate_id, f"{where}.gate_id")
        if not _KIND.match(e.kind):
            raise Invalid(f"{where}.kind: {e.kind!r} is not an event kind")
        if e.device_seq < 1:
            raise Invalid(f"{where}.device_seq: must be 1 or more")
        if not e.HasField("device_time") or e.device_time.seconds <= 0:
            raise Invalid(f"{where}.device_time: missing")
        if len(e.attributes) > MAX_ATTRIBUTES:
            raise Invalid(f"{where}.attributes: at most {MAX_ATTRIBUTES} entries")
        for key, value in e.attributes.items():
            limit = LARGE_ATTRIBUTES.get(key, MAX_ATTRIBUTE_VALUE)
            if len(key) > 64 or len(value) > limit:
                raise Invalid(f"{where}.attributes[{key[:64]!r}]: key at most 64, value at most "
                              f"{limit} characters")
