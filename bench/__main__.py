"""`make bench`: measure, print, and write the figures to bench/results.json (a flat object).

    make bench                 every benchmark
    make bench BENCH=edge      only the benchmarks with figures starting `edge.`, and only
                               those figures are updated in results.json

Each benchmark runs the real processes (RabbitMQ, the nameko services, edgelink, the
pymodbus simulator, the agent) on this machine, and measures its baseline in the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from bench import harness

RESULTS = Path(__file__).resolve().parent / "results.json"


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- edge: card presented -> unlock coil write acknowledged -----------------------------------------

def bench_edge(n: int = 1000) -> dict:
    from pymodbus.client import AsyncModbusTcpClient

    from edge.profiles import load_profile
    from tests.stack import PROFILE

    profile = load_profile(PROFILE)
    with harness.stack() as stack:
        stack.start_access()
        stack.start_edgelink()
        for device in ("t1", "t2"):
            stack.start_sim(device)
        stack.register_agent()
        stack.seed(valid_until_past="2021-01-01T00:00:00+00:00")
        stack.start_agent()
        harness.wait_synced(stack, "2001")

        def presentations(label):
            latencies = []
            with harness.reader(stack) as present:
                for i in range(n):
                    started = time.perf_counter()
                    reply = present("t1" if i % 2 == 0 else "t2", "2001")
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert reply["granted"] and reply["unlocked"], reply
                    if label == "offline":
                        assert reply["offline"], reply
            return latencies

        online = presentations("online")
        stack.stop("edgelink")
        time.sleep(1.0)  # let the agent notice the centre is gone
        offline = presentations("offline")

        async def raw_writes():
            client = AsyncModbusTcpClient("127.0.0.1", port=stack.sim_ports["t1"])
            await client.connect()
            latencies = []
            for _ in range(n):
                started = time.perf_counter()
                # the same write the agent makes to unlock, without the agent around it
                await client.write_coil(profile.points.unlock.address, True, device_id=profile.unit)
                latencies.append((time.perf_counter() - started) * 1000)
            client.close()
            return latencies

        raw = asyncio.run(raw_writes())
    return {
        "edge.decision_p50_ms": round(statistics.median(online), 3),
        "edge.decision_p99_ms": round(percentile(online, 99), 3),
        "edge.decision_offline_p99_ms": round(percentile(offline, 99), 3),
        "modbus.raw_write_p50_ms": round(statistics.median(raw), 3),
        "modbus.raw_write_p99_ms": round(percentile(raw, 99), 3),
    }


# -- ingest: edge outbox -> rows in the access database ------------------------------------------------

def bench_ingest(n: int = 20_000) -> dict:
    ours = harness.outbox_to_rows(n)
    baseline = harness.raw_kombu(n)
    return {"ingest.events_per_s": round(ours, 1),
            "ingest.raw_kombu_per_s": round(baseline, 1),
            "ingest.ratio_to_raw_kombu": round(ours / baseline, 2),
            "ingest.events_per_s_postgresql": round(harness.outbox_to_rows(n, "postgresql"), 1)}


BENCHMARKS = {
    "edge": (bench_edge, ("edge.", "modbus.")),
    "ingest": (bench_ingest, ("ingest.",)),
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
