"""`make bench`: measure, print, and write the figures to bench/results.json (a flat object).

    make bench                 every benchmark
    make bench BENCH=edge      only the benchmarks with figures starting `edge.`, and only
                               those figures are updated in results.json
    make bench BENCH=access    the site of 100,000 people: full sync, change propagation

Each benchmark runs the real processes (RabbitMQ, the nameko services, edgelink, the
pymodbus simulator, the agent) on this machine, and measures its baseline in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench import harness
from bench.parking import bench_parking

RESULTS = Path(__file__).resolve().parent / "results.json"


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- edge: card presented -> unlock coil write acknowledged -----------------------------------------

def _present_many(stack, n: int, cards, label: str) -> list[float]:
    """n presentations alternating t1 (north, the zone's entry) and t2 (garage, its exit); each
    card is presented at t1 then t2, so timed anti-passback is checked but never refuses."""
    latencies = []
    with harness.reader(stack) as present:
        card = None
        for i in range(n):
            if i % 2 == 0:
                card = next(cards)
            started = time.perf_counter()
            reply = present("t1" if i % 2 == 0 else "t2", card)
            latencies.append((time.perf_counter() - started) * 1000)
            assert reply["granted"] and reply["unlocked"], reply
            if label == "offline":
                assert reply["offline"], reply
    return latencies


def _edge_small(n: int) -> tuple[list[float], float]:
    """The small site of tests/stack.py (three people, no schedule, no zone): online latencies
    and the agent's VmRSS (MB) afterwards."""
    from bench import access
    with harness.stack() as stack:
        stack.start_access()
        stack.start_edgelink()
        for device in ("t1", "t2"):
            stack.start_sim(device)
        stack.register_agent()
        stack.seed(valid_until_past="2021-01-01T00:00:00+00:00")
        stack.start_agent()
        harness.wait_synced(stack, "2001")
        latencies = _present_many(stack, n, iter(lambda: "2001", None), "online")
        rss = access.rss_mb(stack.procs["agent"].pid)["VmRSS"]
    return latencies, rss


def bench_edge(n: int = 1000) -> dict:
    """Decisions at the site of 100,000 people (bench/access.py: schedule on the group, timed
    anti-passback on the zone t1 -> t2), online then offline, with the agent's memory; the
    small site's figures and a raw Modbus write for comparison."""
    import random

    from bench import access
    from edge.profiles import load_profile
    from tests.stack import PROFILE

    profile = load_profile(PROFILE)
    small, small_rss = _edge_small(n)
    rnd = random.Random(2)
    cards = iter(lambda: access.card_of(rnd.randrange(access.N - 1)), None)
    with harness.big_site() as (stack, version, credentials):
        sync = access.timed_fresh_sync(stack, version, credentials)
        print(f"    agent synced {sync['rows']} credentials in {sync['total_s']:.2f} s", flush=True)
        pid = stack.procs["agent"].pid
        rss_synced = access.rss_mb(pid)
        online = _present_many(stack, n, cards, "online")
        rss_used = access.rss_mb(pid)
        resync, resync_s, resync_inside, resync_decided = access.decisions_during_resync(stack, cards)
        print(f"    {len(resync)} decisions during a full re-sync of {resync_s:.1f} s", flush=True)
        rss_resynced = access.rss_mb(pid)
        stack.stop("edgelink")
        time.sleep(1.0)  # let the agent notice the centre is gone
        offline = _present_many(stack, n, cards, "offline")
        # the path measured had anti-passback on: the same entry twice within a minute is refused
        unused = access.card_of(access.N - 1)    # never drawn above (randrange(N - 1))
        first, again = stack.present("t1", unused), stack.present("t1", unused)
        assert first["granted"] and again["reason"] == "antipassback", (first, again)

        # the same write the agent makes to unlock, without the agent around it
        raw = harness.raw_coil_writes(stack.sim_ports["t1"], profile.points.unlock, profile.unit, n)
    return {
        # 100,000 people (200,000 credential rows at the agent: cards and person QR keys)
        "edge.decision_p50_ms": round(statistics.median(online), 3),
        "edge.decision_p99_ms": round(percentile(online, 99), 3),
        "edge.decision_offline_p99_ms": round(percentile(offline, 99), 3),
        "edge.rss_mb_100k": round(max(rss_synced["VmRSS"], rss_used["VmRSS"]), 1),
        "edge.rss_mb_100k_after_sync": round(rss_synced["VmRSS"], 1),
        "edge.rss_mb_100k_after_decisions": round(rss_used["VmRSS"], 1),
        "edge.rss_peak_mb_100k": round(rss_resynced["VmHWM"], 1),   # includes a full sync and a re-sync
        "edge.rss_mb_100k_after_resync": round(rss_resynced["VmRSS"], 1),
        # the same decisions while the agent takes a full re-sync (access publishes a snapshot)
        "edge.decision_during_resync_p50_ms": round(statistics.median(resync), 3),
        "edge.decision_during_resync_p99_ms": round(percentile(resync, 99), 3),
        "edge.decision_during_resync_max_ms": round(max(resync), 3),
        # the agent's own part of the same decisions (reader round trip and queueing excluded)
        "edge.decision_during_resync_agent_p99_ms": round(percentile(resync_inside, 99), 3),
        "edge.decision_during_resync_decided_p99_ms": round(percentile(resync_decided, 99), 3),
        # the three-person site, as measured before the 100k site existed
        "edge.decision_small_p50_ms": round(statistics.median(small), 3),
        "edge.decision_small_p99_ms": round(percentile(small, 99), 3),
        "edge.rss_mb_small": round(small_rss, 1),
        "edge.rss_ratio_100k_to_small": round(max(rss_synced["VmRSS"], rss_used["VmRSS"]) / small_rss, 2),
        "modbus.raw_write_p50_ms": round(statistics.median(raw), 3),
        "modbus.raw_write_p99_ms": round(percentile(raw, 99), 3),
    }


# -- access: full sync of 100,000 people, and a change in the console until the agent decides by it --

def bench_access(iterations: int = 200, sync_runs: int = 3) -> dict:
    from bench import access
    with harness.big_site(console=True) as (stack, version, credentials):
        runs = []
        for _ in range(sync_runs):
            runs.append(access.timed_fresh_sync(stack, version, credentials))
            print("    fresh agent: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in runs[-1].items()), flush=True)
        payloads = access.projection_payloads(stack)
        raw_stream = access.raw_grpc_stream(payloads, stack.tmp)
        raw_insert = access.raw_sqlite_insert(payloads, stack.tmp)
        with harness.reader(stack) as present:   # the agent of the last sync run
            prop = access.propagation(stack, present, iterations=iterations)
        print(f"    propagation: {prop['polls']} polls, other replies while waiting: {dict(prop['unexpected'])}",
              flush=True)
        rpc = access.rpc_round_trips(stack)
        revoke_rpc = access.revoke_round_trips(stack)
    total = statistics.median(r["total_s"] for r in runs)
    sync_only = statistics.median(r["sync_s"] for r in runs)
    both = prop["revoke"] + prop["grant"]
    return {
        "access.sync_full_100k_s": round(total, 3),
        "access.sync_full_100k_sync_only_s": round(sync_only, 3),
        "access.sync_agent_startup_s": round(statistics.median(r["startup_s"] for r in runs), 3),
        "access.sync_rows_100k": runs[0]["rows"],
        "access.sync_raw_grpc_stream_100k_s": round(raw_stream, 3),
        "access.sync_raw_sqlite_insert_100k_s": round(raw_insert, 3),
        "access.sync_ratio_to_raw_grpc_stream": round(sync_only / raw_stream, 2),
        "access.sync_ratio_to_raw_sqlite_insert": round(sync_only / raw_insert, 2),
        "access.sync_ratio_to_raw_stream_plus_insert": round(sync_only / (raw_stream + raw_insert), 2),
        "access.delta_propagation_p50_ms": round(statistics.median(both), 2),
        "access.delta_propagation_p99_ms": round(percentile(both, 99), 2),
        "access.delta_revoke_p50_ms": round(statistics.median(prop["revoke"]), 2),
        "access.delta_grant_p50_ms": round(statistics.median(prop["grant"]), 2),
        "access.delta_console_call_p50_ms": round(statistics.median(prop["call"]), 2),
        "access.delta_revoke_rpc_p50_ms": round(statistics.median(revoke_rpc), 2),
        "access.delta_raw_rpc_p50_ms": round(statistics.median(rpc), 2),
        "access.delta_raw_rpc_p99_ms": round(percentile(rpc, 99), 2),
        "access.delta_ratio_to_raw_rpc": round(statistics.median(both) / statistics.median(rpc), 2),
    }


# -- ingest: edge outbox -> rows in the access database ------------------------------------------------

def bench_ingest(n: int = 20_000) -> dict:
    ours = harness.outbox_to_rows(n)
    baseline = harness.raw_kombu(n)
    return {"ingest.events_per_s": round(ours, 1),
            "ingest.raw_kombu_per_s": round(baseline, 1),
            "ingest.ratio_to_raw_kombu": round(ours / baseline, 2),
            "ingest.events_per_s_postgresql": round(harness.outbox_to_rows(n, "postgresql"), 1)}


# -- lpr: plate finding and reading on one core (real crops, rendered scenes, rapidocr baseline) ------

def bench_lpr() -> dict:
    from bench import lpr
    return lpr.bench_lpr()


def _area(name: str):
    """bench/<name>.py's bench_<name>(), imported only when it runs."""
    def run() -> dict:
        import importlib
        return getattr(importlib.import_module(f"bench.{name}"), f"bench_{name}")()
    return run


BENCHMARKS = {
    "edge": (bench_edge, ("edge.", "modbus.")),
    "ingest": (bench_ingest, ("ingest.",)),
    "access": (bench_access, ("access.",)),
    "parking": (bench_parking, ("parking.",)),
    "lpr": (bench_lpr, ("lpr.",)),
    "billing": (_area("billing"), ("billing.",)),
    "patrol": (_area("patrol"), ("patrol.",)),
    "notify": (_area("notify"), ("notify.",)),
}


def main(argv=None) -> int:
    import logging
    logging.getLogger("amqp").setLevel(logging.ERROR)   # "Received method during closing channel" noise
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="a figure prefix, e.g. edge, ingest, modbus")
    args = parser.parse_args(argv)
    prefix = f"{args.only.rstrip('.')}." if args.only else ""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    ran = False
    for name, (fn, prefixes) in BENCHMARKS.items():
        if prefix and not any(p.startswith(prefix) or prefix.startswith(p) for p in prefixes):
            continue
        ran = True
        print(f"running {name} ...", flush=True)
        figures = fn()
        for key, value in figures.items():
            if key.startswith(prefix):
                results[key] = value
                print(f"  {key} = {value}", flush=True)
    if not ran:
        print(f"no benchmark has figures starting with {prefix!r}; known: {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    RESULTS.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    print(json.dumps(dict(sorted(results.items())), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
