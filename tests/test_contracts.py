"""The generated gRPC code matches proto/, and edge batches are checked field by field."""
import subprocess
import sys
import uuid

import pytest

from gatehouse.edge.v1 import edge_pb2 as pb
from services.edgelink import validate
from tests.stack import ROOT


def test_generated_code_is_not_stale():
    result = subprocess.run([sys.executable, "-m", "gatehouse.protogen", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _event(**kw):
    e = pb.EdgeEvent(event_id=str(uuid.uuid4()), device_id="t1", gate_id="north", kind="passage", device_seq=1)
    e.device_time.GetCurrentTime()
    for k, v in kw.items():
        setattr(e, k, v)
    return e


@pytest.mark.parametrize("kw, message", [
    ({"event_id": "not-a-uuid"}, "events[0].event_id"),
    ({"device_id": ""}, "events[0].device_id"),
    ({"kind": "Bad Kind!"}, "events[0].kind"),
    ({"device_seq": 0}, "events[0].device_seq"),
])
def test_bad_fields_are_named(kw, message):
    batch = pb.EventBatch(events=[_event(**kw)])
    with pytest.raises(validate.Invalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate.check_batch(batch, batch.ByteSize())


def test_batch_limits():
    empty = pb.EventBatch()
    with pytest.raises(validate.Invalid, match="1 to 1000"):
        validate.check_batch(empty, 0)
    e = _event()
    twice = pb.EventBatch(events=[e, e])
    with pytest.raises(validate.Invalid, match="twice"):
        validate.check_batch(twice, twice.ByteSize())
    ok = pb.EventBatch(events=[_event() for _ in range(3)])
    validate.check_batch(ok, ok.ByteSize())
