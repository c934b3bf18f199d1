"""Parking lane decisions at the edge: a plate read (recognition excluded) until the barrier
controller has acknowledged the open command, and a bare Modbus write of the same coil as the
baseline, in the same run."""
from __future__ import annotations

import json
import socket
import statistics
import time

from bench import harness

TARIFF = {"free_minutes": 15, "first_period_minutes": 60, "first_period_fen": 500, "increment_minutes": 30,
          "increment_fen": 200, "night_start": "", "daily_cap_fen": 3000}


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


def bench_parking(n: int = 500, residents: int = 10_000) -> dict:

    from edge.profiles import load_profile
    from tests.stack import BARRIER_PROFILE, wait_for

    with harness.stack() as stack:
        stack.start_parking()
        stack.start_edgelink()
        stack.start_lane_sims(travel_ms=50)
        stack.register_agent()
        with stack.rpc() as rpc:
            rpc.parking.set_lot(stack.site_id, "lot1", "Garage", "Asia/Shanghai", 100, TARIFF)
            rpc.parking.add_lane("lot1", "in1", "Entry", "entry")
            rpc.parking.add_lane("lot1", "out1", "Exit", "exit")
            plates = [f"皖A{i:05d}" for i in range(residents)]
            for plate in plates:
                rpc.parking.register_vehicle("lot1", plate, "resident", "unit")
        stack.start_agent(stack.write_site_file(devices=[], lanes=stack.lane_config()))
        with socket.create_connection(("127.0.0.1", stack.reader_port), timeout=10) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lines = conn.makefile("rb")

            def read(lane, plate):
                conn.sendall(json.dumps({"lane_id": lane, "plate": plate, "confidence": 0.97},
                                        ensure_ascii=False).encode() + b"\n")
                return json.loads(lines.readline())
            wait_for(lambda: read("in1", plates[-1]).get("opened"), timeout=120, interval=0.5,
                     what="the lanes and every resident synced")
            read("out1", plates[-1])
            inside, round_trip = [], []
            for i in range(n):
                plate = plates[i % residents]
                for lane in ("in1", "out1"):
                    started = time.perf_counter()
                    reply = read(lane, plate)
                    round_trip.append((time.perf_counter() - started) * 1000)
                    assert reply["opened"], reply
                    inside.append(reply["ms"])

        profile = load_profile(BARRIER_PROFILE)
        raw = harness.raw_coil_writes(stack.lane_ports["in1"][0], profile.points.open, profile.unit, n)
    return {
        "parking.lane_decision_p50_ms": round(statistics.median(inside), 3),
        "parking.lane_decision_p99_ms": round(percentile(inside, 99), 3),
        "parking.lane_round_trip_p99_ms": round(percentile(round_trip, 99), 3),
        "parking.raw_barrier_write_p99_ms": round(percentile(raw, 99), 3),
        "parking.lane_decision_ratio_to_raw_write_p50": round(statistics.median(inside) / statistics.median(raw), 2),
        "parking.lane_residents": residents,
    }
