"""One gate, end to end, with real processes: a card at a turnstile opens it (online or
offline), and the centre records every event exactly once, in order per device.

Real RabbitMQ, real SQLite and PostgreSQL, real Modbus TCP against the simulator, real gRPC.
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from edge.profiles import load_profile
from edge.sim.turnstile import read_state, trigger
from tests.stack import BIN, PROFILE, rabbitmqctl, wait_for

EXPIRED = "2021-01-01T00:00:00+00:00"


def sim_state(stack, device):
    return asyncio.run(read_state("127.0.0.1", stack.sim_ports[device], load_profile(PROFILE)))


def sim_trigger(stack, device, what):
    asyncio.run(trigger("127.0.0.1", stack.sim_ports[device], load_profile(PROFILE), what))


def boot(stack, console=False):
    stack.start_access()
    stack.start_edgelink()
    if console:
        stack.start_console()
    for device in ("t1", "t2"):
        stack.start_sim(device)
    stack.register_agent()
    stack.seed(valid_until_past=EXPIRED)
    stack.start_agent()
    # the agent has the cards once Bob's reaches it
    wait_for(lambda: stack.agent_cached("2001"), timeout=30, what="credentials synced to the agent")


def events_when(stack, predicate, timeout=30):
    """The site's stored events, once `predicate(events)` holds."""
    def check():
        events = stack.events()
        return events if predicate(events) else None
    return wait_for(check, timeout=timeout, interval=0.2, what="events at the centre")


def assert_exactly_once_in_order(events, expected_ids):
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(expected_ids) <= set(ids), f"missing: {set(expected_ids) - set(ids)}"
    by_device: dict[str, list[int]] = {}
    for e in events:                    # `events` is in storage order (oldest first)
        by_device.setdefault(e["device_id"], []).append(e["device_seq"])
    for device, seqs in by_device.items():
        assert seqs == sorted(seqs), f"{device}: stored out of order: {seqs}"
        assert seqs == list(range(1, len(seqs) + 1)), f"{device}: gap or duplicate in {seqs}"


def test_card_at_turnstile_online(stack):
    boot(stack, console=True)
    before = sim_state(stack, "t1")["unlock_count"]

    granted = stack.present("t1", "1001")                 # Ann, resident, north gate
    assert granted["granted"] and granted["unlocked"] and not granted["offline"], granted
    state = sim_state(stack, "t1")                        # read back over Modbus
    assert state["unlock_count"] == before + 1 and state["unlocked"]

    sim_trigger(stack, "t1", "passage")
    assert not sim_state(stack, "t1")["unlocked"]         # relocked by the passage

    for card, reason in (("9999", "unknown_card"), ("3001", "expired")):
        denied = stack.present("t1", card)
        assert not denied["granted"] and denied["reason"] == reason
    assert sim_state(stack, "t1")["unlock_count"] == before + 1   # coil untouched on denial
    assert stack.present("t2", "1001")["reason"] == "no_access_to_gate"

    events = events_when(stack, lambda e: len([x for x in e if x["kind"] != "device_online"]) >= 5)
    kinds = [(e["kind"], e["card_number"], e["reason"]) for e in events if e["device_id"] == "t1"]
    assert ("access_granted", "1001", "granted") in kinds
    assert ("passage", None, None) in kinds
    assert ("access_denied", "9999", "unknown_card") in kinds
    assert ("access_denied", "3001", "expired") in kinds
    assert_exactly_once_in_order(events, [granted["event_id"]])
    stored = next(e for e in events if e["event_id"] == granted["event_id"])
    assert stored["offline"] is False and stored["received_at"] >= stored["device_time"]

    # the console shows the same, newest first and paged, and says who is up
    base = f"http://127.0.0.1:{stack.console_port}"
    page = json.loads(urllib.request.urlopen(f"{base}/api/events?limit=2&site_id={stack.site_id}").read())
    assert [e["id"] for e in page["events"]] == sorted((e["id"] for e in page["events"]), reverse=True)
    assert len(page["events"]) == 2 and page["next_before"] == page["events"][-1]["id"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{base}/api/events?limit=5000")
    assert bad.value.code == 400 and "limit" in json.loads(bad.value.read())["error"]
    def healthy():
        h = json.loads(urllib.request.urlopen(f"{base}/api/health").read())
        agent_up = any(a["agent_id"] == stack.agent_id and a["connected"] for a in h["agents"])
        core_up = all(h["services"][s]["state"] == "up" for s in ("access", "edgelink"))
        return h if core_up and agent_up else None
    health = wait_for(healthy, what="console health ok with the agent connected")
    assert health["services"]["access"]["state"] == "up" and health["services"]["edgelink"]["state"] == "up"
    assert health["sites"][stack.site_id] >= 3

    # a revoke reaches the gate
    with stack.rpc() as rpc:
        rpc.access.revoke_card(stack.site_id, "1001")
    wait_for(lambda: stack.agent_cached("1001")[0] == "revoked", what="revoke at the agent")
    assert stack.present("t1", "1001")["reason"] == "card_revoked"

    # remote open goes down the command stream and is recorded
    before = sim_state(stack, "t2")["unlock_count"]
    with stack.rpc() as rpc:
        rpc.access.request_gate_open(stack.site_id, "garage", "guard-7", "delivery")
    wait_for(lambda: sim_state(stack, "t2")["unlock_count"] == before + 1, what="remote open at t2")
    opened = wait_for(lambda: stack.events(kind="remote_open"), what="remote_open event")
    assert opened[0]["attributes"]["requested_by"] == "guard-7"


def test_edgelink_down_agent_decides_and_delivers_later(stack):
    boot(stack)
    stack.stop("edgelink")
    wait_for(lambda: "centre link down" in stack.log("agent"), what="the agent noticing the centre is gone")
    presented = []
    for i in range(30):
        device, card = ("t1", "1001") if i % 2 == 0 else ("t2", "2001")
        reply = stack.present(device, card)
        presented.append(reply)
    assert all(r["granted"] and r["unlocked"] for r in presented)
    assert all(r["offline"] for r in presented), "decisions made without the centre must say so"
    assert stack.outbox_size() >= 30
    stack.start_edgelink()
    wait_for(lambda: stack.outbox_size() == 0, timeout=30, what="outbox drained")
    expected = [r["event_id"] for r in presented]
    events = events_when(stack, lambda e: set(expected) <= {x["event_id"] for x in e})
    assert_exactly_once_in_order(events, expected)
    offline = {e["event_id"]: e["offline"] for e in events}
    assert all(offline[r["event_id"]] for r in presented)


@pytest.mark.broker_restart
def test_broker_restart_while_events_flow(stack):
    ctl = rabbitmqctl()
    if ctl is None:
        pytest.skip("needs rabbitmqctl to restart the local broker")
    boot(stack)
    presented = []
    restarted = False
    for i in range(60):
        presented.append(stack.present("t1" if i % 2 == 0 else "t2", "2001"))
        if i == 20:
            subprocess.run([ctl, "stop_app"], check=True, capture_output=True)
        if i == 35:
            subprocess.run([ctl, "start_app"], check=True, capture_output=True)
            restarted = True
        time.sleep(0.05)
    assert restarted and all(r["granted"] for r in presented)
    expected = [r["event_id"] for r in presented]
    events = events_when(stack, lambda e: set(expected) <= {x["event_id"] for x in e}, timeout=90)
    assert_exactly_once_in_order(events, expected)
    # every consumer came back: a change made after the restart still reaches the gate
    with stack.rpc() as rpc:
        rpc.access.revoke_card(stack.site_id, "1001")
    wait_for(lambda: stack.agent_cached("1001")[0] == "revoked", timeout=30, what="revoke after the restart")


def test_unreachable_device_is_reported_and_others_keep_working(stack):
    stack.start_access()
    stack.start_edgelink()
    stack.start_sim("t2")                      # t1's controller is unplugged from the start
    stack.register_agent()
    stack.seed(valid_until_past=EXPIRED)
    stack.start_agent()
    wait_for(lambda: stack.agent_cached("2001"), timeout=30, what="credentials synced")
    reply = stack.present("t2", "2001")
    assert reply["granted"] and reply["unlocked"]
    failed = stack.present("t1", "2001")       # granted by the rules, but the device is not there
    assert failed["granted"] and not failed["unlocked"]
    offline = wait_for(lambda: stack.events(kind="device_offline"), what="device_offline at the centre")
    assert [e["device_id"] for e in offline] == ["t1"]
    stack.start_sim("t1")                      # plugged back in: the agent's retry finds it
    wait_for(lambda: [e for e in stack.events(kind="device_online") if e["device_id"] == "t1"], timeout=20,
             what="t1 device_online")
    assert stack.present("t1", "2001")["unlocked"]
    assert len(stack.events(kind="device_offline")) == 1


def test_bad_profile_stops_the_agent_naming_file_and_field(stack, tmp_path):
    stack.register_agent()
    bad = tmp_path / "bad-profile.yaml"
    bad.write_text(PROFILE.read_text().replace("table: coil", "table: holding_register", 1))
    result = stack.run(str(BIN / "gatehouse"), "agent", "run",
                       str(stack.write_site_file(profile=bad)), check=False, timeout=30)
    assert result.returncode == 2
    assert "bad-profile.yaml" in result.stderr and "points.unlock" in result.stderr, result.stderr


def test_agent_crash_and_full_outbox_lose_nothing(stack):
    boot(stack)
    stack.stop("edgelink")
    # a tiny alarm level, so the outbox passes it
    stack.stop("agent")
    stack.start_agent(stack.write_site_file(outbox_alarm_at=5))
    first = [stack.present("t1", "1001") for _ in range(4)]
    stack.stop("agent", sig=signal.SIGKILL)              # power cut at the gate box
    assert stack.outbox_size() >= 4
    stack.start_agent(stack.write_site_file(outbox_alarm_at=5))
    second = [stack.present("t2", "2001") for _ in range(4)]   # decided from the cache kept on disk
    assert all(r["granted"] and r["unlocked"] and r["offline"] for r in first + second)
    with stack.agent_db() as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM outbox ORDER BY seq")]
    assert "outbox_high_water" in kinds                   # alarmed, and nothing discarded
    stack.start_edgelink()
    expected = [r["event_id"] for r in first + second]
    events = events_when(stack, lambda e: set(expected) <= {x["event_id"] for x in e}
                         and any(x["kind"] == "outbox_high_water" for x in e))
    assert_exactly_once_in_order(events, expected)
    wait_for(lambda: stack.outbox_size() == 0, what="outbox drained")


def test_console_says_when_access_is_down(stack):
    stack.start_access()
    stack.start_console()
    base = f"http://127.0.0.1:{stack.console_port}"
    wait_for(lambda: json.loads(urllib.request.urlopen(f"{base}/api/health").read())["services"]["access"]["state"]
             == "up", what="access up in health")
    stack.stop("access")
    with pytest.raises(urllib.error.HTTPError) as down:
        urllib.request.urlopen(f"{base}/api/events", timeout=30)
    assert down.value.code == 504 and "access" in json.loads(down.value.read())["error"]
    health = wait_for(lambda: (h := json.loads(urllib.request.urlopen(f"{base}/api/health").read()))
                      ["services"]["access"]["state"] == "down" and h, what="access down in health")
    assert health["status"] == "degraded"


def test_agent_follows_a_rebuilt_projection(stack):
    boot(stack)
    with stack.rpc() as rpc:                # move the agent's cursor well past the card count
        for _ in range(5):
            rpc.access.revoke_card(stack.site_id, "2001")
            rpc.access.issue_card("bob", "2001")
    wait_for(lambda: stack.agent_cached("2001")[0] == "active" and stack.present("t2", "2001")["granted"],
             what="Bob's card active again")
    stack.stop("edgelink")
    stack.db.wipe("edgelink")               # edgelink's data is lost; it rebuilds from access
    stack.migrate()
    stack.register_agent()                  # the agent is registered anew (new secret)
    stack.stop("agent")
    stack.start_edgelink()
    stack.start_agent()
    with stack.rpc() as rpc:                # a change after the rebuild, at a low version again
        rpc.access.revoke_card(stack.site_id, "1001")
    wait_for(lambda: stack.agent_cached("1001")[0] == "revoked", timeout=60, what="revoke after the rebuild")
    assert stack.present("t1", "1001")["reason"] == "card_revoked"
    assert stack.present("t2", "2001")["granted"]
