"""edgelink's front door over real gRPC: who may call, and what is refused, with which status."""
import uuid

import grpc
import pytest

from gatehouse.edge.v1 import edge_pb2 as pb
from gatehouse.edge.v1 import edge_pb2_grpc as pb_grpc
from tests.stack import wait_for


@pytest.fixture
def link(stack):
    stack.start_edgelink()
    secret = stack.register_agent()
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.edgelink_port}")
    yield stack, pb_grpc.EdgeLinkStub(channel), (("x-agent-id", stack.agent_id), ("x-agent-secret", secret)), channel
    channel.close()


def _event(**kw):
    e = pb.EdgeEvent(**{"event_id": str(uuid.uuid4()), "device_id": "t1", "gate_id": "north", "kind": "passage",
                        "device_seq": 1, **kw})
    e.device_time.GetCurrentTime()
    return e


def test_wrong_secret_is_unauthenticated(link):
    stack, stub, good, _ = link
    for metadata in ((("x-agent-id", stack.agent_id), ("x-agent-secret", "nope")),
                     (("x-agent-id", "stranger"), ("x-agent-secret", good[1][1])), ()):
        with pytest.raises(grpc.RpcError) as err:
            stub.Hello(pb.HelloRequest(site_id=stack.site_id), metadata=metadata, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = stub.Hello(pb.HelloRequest(site_id=stack.site_id), metadata=good, timeout=5)
    assert reply.site_id == stack.site_id


def test_agent_cannot_speak_for_another_site(link):
    stack, stub, good, _ = link
    with pytest.raises(grpc.RpcError) as err:
        stub.Hello(pb.HelloRequest(site_id="other-site"), metadata=good, timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_bytes_are_invalid_argument(link):
    stack, _, good, channel = link
    raw = channel.unary_unary("/gatehouse.edge.v1.EdgeLink/ReportEvents",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a\xff\xff\xff\xff\x0f garbage", metadata=good, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed EventBatch" in err.value.details()


@pytest.mark.parametrize("batch, field", [
    (lambda: pb.EventBatch(events=[_event() for _ in range(1001)]), "1 to 1000 events, got 1001"),
    (lambda: pb.EventBatch(events=[_event(attributes={"note": "x" * 5000})]), "events[0].attributes"),
    (lambda: pb.EventBatch(events=[pb.EdgeEvent(event_id="123", device_id="t1", kind="passage", device_seq=1)]),
     "events[0].event_id"),
])
def test_bad_batches_are_invalid_argument(link, batch, field):
    stack, stub, good, _ = link
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportEvents(batch(), metadata=good, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_oversized_message_is_refused(link):
    stack, stub, good, _ = link
    huge = pb.EventBatch(events=[_event(attributes={f"k{i}": "x" * 1000 for i in range(30)}) for _ in range(40)])
    assert huge.ByteSize() > 1 << 20
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportEvents(huge, metadata=good, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in err.value.details()


def test_events_are_not_acknowledged_when_nobody_can_store_them(link):
    # No access service has bound its queue in this fresh vhost: the publish is unroutable,
    # so edgelink must not acknowledge (the agent keeps the events and retries).
    stack, stub, good, _ = link
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportEvents(pb.EventBatch(events=[_event()]), metadata=good, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_retried_batch_is_acknowledged_and_stored_once(link):
    stack, stub, good, _ = link
    stack.start_access()
    batch = pb.EventBatch(events=[_event(device_seq=i) for i in range(1, 6)])
    ids = [e.event_id for e in batch.events]
    for _ in range(3):     # the agent lost the first two acks and sent again
        ack = stub.ReportEvents(batch, metadata=good, timeout=10)
        assert list(ack.accepted_event_ids) == ids
    marker = pb.EventBatch(events=[_event(device_id="t2")])   # stored after the three, in order
    stub.ReportEvents(marker, metadata=good, timeout=10)
    events = wait_for(lambda: (e := stack.events()) and e[-1]["event_id"] == marker.events[0].event_id and e,
                      what="the marker stored")
    assert [e["event_id"] for e in events] == ids + [marker.events[0].event_id]
    assert all(e["received_at"] and e["device_time"] for e in events)


def test_streams_cannot_starve_event_reports(stack):
    # 20 threads, 16 kept for unary calls: at most 4 streams
    stack.env["EDGELINK_WORKERS"] = "20"
    stack.start_edgelink()
    secret = stack.register_agent()
    metadata = (("x-agent-id", stack.agent_id), ("x-agent-secret", secret))
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.edgelink_port}")
    stub = pb_grpc.EdgeLinkStub(channel)
    streams = [stub.Sync(pb.SyncRequest(follow=True), metadata=metadata) for _ in range(4)]
    for s in streams:
        assert next(s).caught_up           # each stream is open and holding a thread
    with pytest.raises(grpc.RpcError) as full:
        next(stub.Sync(pb.SyncRequest(follow=True), metadata=metadata, timeout=5))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "EDGELINK_WORKERS" in full.value.details()
    with pytest.raises(grpc.RpcError) as answered:   # a unary call still gets a thread and an answer
        stub.ReportEvents(pb.EventBatch(), metadata=metadata, timeout=5)
    assert answered.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    streams[0].cancel()                               # a closed stream frees its place
    wait_for(lambda: next(stub.Sync(pb.SyncRequest(follow=True), metadata=metadata, timeout=5)).caught_up,
             timeout=15, what="a stream place freed")
    channel.close()
