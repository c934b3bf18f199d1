"""Which services are up, from the heartbeats they publish. Plain code, no AMQP here."""
from __future__ import annotations

import time

STALE_AFTER_S = 6.0     # three missed 2-second heartbeats
WATCHED = ("access", "edgelink", "parking", "billing", "notify", "patrol")


class HealthBoard:
    def __init__(self, clock=time.time):
        self.clock = clock
        self.beats: dict[str, tuple[float, dict]] = {}

    def beat(self, service: str, payload: dict) -> None:
        self.beats[service] = (self.clock(), payload)

    def report(self) -> dict:
        now = self.clock()
        services = {"console": {"state": "up"}}
        for name in WATCHED:
            seen = self.beats.get(name)
            if seen is None:
                services[name] = {"state": "unknown", "detail": "no heartbeat received yet"}
                continue
            age = now - seen[0]
            services[name] = {"state": "up" if age <= STALE_AFTER_S else "down", "last_seen_s_ago": round(age, 1),
                              **{k: v for k, v in seen[1].items() if k in ("pid", "uptime_s")}}
        edgelink = self.beats.get("edgelink", (0, {}))[1]
        agents = edgelink.get("agents", []) if services["edgelink"]["state"] == "up" else []
        overall = "ok" if all(s["state"] == "up" for s in services.values()) else "degraded"
        return {"status": overall, "services": services, "agents": agents, "sites": edgelink.get("sites", {})}

    def gate_reachable(self, site_id: str, gate_id: str) -> tuple[bool, str]:
        """Whether a command for this gate can reach its agent now, and if not, why."""
        seen = self.beats.get("edgelink")
        if seen is None or self.clock() - seen[0] > STALE_AFTER_S:
            return False, "edgelink (the link to the gates) is not reporting; no gate can be reached"
        serving = [a for a in seen[1].get("agents", []) if a.get("site_id") == site_id and gate_id in a.get("gate_ids", [])]
        if not serving:
            return False, f"no agent has reported serving gate {gate_id!r} since edgelink started"
        if not any(a.get("connected") for a in serving):
            ago = [a["last_seen_s_ago"] for a in serving if a.get("last_seen_s_ago") is not None]
            since = f" (last seen {min(ago)} s ago)" if ago else ""
            return False, f"the agent for gate {gate_id!r} is offline{since}; the gate cannot be opened remotely"
        return True, ""
