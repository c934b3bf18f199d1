"""The agent's own SQLite file: the synced credentials, the sync cursor, and the outbox.

Every event is committed here before anything else happens to it; it leaves the outbox only
when the centre has acknowledged it. Nothing is ever dropped: a large outbox raises an alarm.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from services.access.rules import Credential

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (
    card_number TEXT PRIMARY KEY, person_id TEXT NOT NULL, person_name TEXT NOT NULL,
    status TEXT NOT NULL, valid_from INTEGER NOT NULL, valid_until INTEGER NOT NULL,
    gate_ids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_seq (device_id TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, device_id TEXT NOT NULL,
    gate_id TEXT NOT NULL, kind TEXT NOT NULL, device_seq INTEGER NOT NULL, device_time REAL NOT NULL,
    offline INTEGER NOT NULL, attributes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
"""
OUTBOX_COLUMNS = ("seq", "event_id", "device_id", "gate_id", "kind", "device_seq", "device_time",
                  "offline", "attributes")


class EdgeStore:
    def __init__(self, path: Path, durable: bool = True):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed event survives a power cut at the gate, not only a crash.
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- credentials --------------------------------------------------------------------------

    def credential(self, card_number: str) -> Credential | None:
        row = self.db.execute("SELECT card_number, person_id, person_name, status, valid_from, valid_until, "
                              "gate_ids FROM credentials WHERE card_number = ?", (card_number,)).fetchone()
        if row is None:
            return None
        return Credential(*row[:6], gate_ids=frozenset(row[6].split("\x1f")) if row[6] else frozenset())

    def apply_changes(self, credentials: list[dict], cursor: int, epoch: str) -> None:
        """One sync batch, with the position (epoch, cursor) it brings us to, in one transaction."""
        rows = [(c["card_number"], c["person_id"], c["person_name"], c["status"], c["valid_from"],
                 c["valid_until"], "\x1f".join(c["gate_ids"])) for c in credentials]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO credentials VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [("cursor", str(cursor)), ("epoch", epoch)])

    @property
    def position(self) -> tuple[str, int]:
        """(epoch, cursor) of the last applied sync batch."""
        rows = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('cursor', 'epoch')").fetchall())
        return rows.get("epoch", ""), int(rows.get("cursor", 0))

    def credential_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM credentials").fetchone()[0]

    # -- outbox ---------------------------------------------------------------------------------

    def append_event(self, device_id: str, gate_id: str, kind: str, attributes: dict, offline: bool) -> dict:
        event = {"event_id": str(uuid.uuid4()), "device_id": device_id, "gate_id": gate_id, "kind": kind,
                 "device_time": time.time(), "offline": offline,
                 "attributes": {k: str(v) for k, v in attributes.items() if v is not None}}
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO device_seq VALUES (?, 1) ON CONFLICT(device_id) DO UPDATE SET last = last + 1",
                            (device_id,))
            event["device_seq"] = self.db.execute("SELECT last FROM device_seq WHERE device_id = ?",
                                                  (device_id,)).fetchone()[0]
            self.db.execute("INSERT INTO outbox (event_id, device_id, gate_id, kind, device_seq, device_time, "
                            "offline, attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (event["event_id"], device_id, gate_id, kind, event["device_seq"], event["device_time"],
                             int(offline), json.dumps(event["attributes"])))
        return event

    def pending(self, limit: int) -> list[dict]:
        rows = self.db.execute(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox ORDER BY seq LIMIT ?",
                               (limit,)).fetchall()
        events = []
        for row in rows:
            event = dict(zip(OUTBOX_COLUMNS, row, strict=True))
            event["offline"] = bool(event["offline"])
            event["attributes"] = json.loads(event["attributes"])
            events.append(event)
        return events

    def acknowledge(self, event_ids: list[str]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM outbox WHERE event_id = ?", [(e,) for e in event_ids])

    def quarantine(self, events: list[dict], error: str) -> None:
        """Events the centre refuses as invalid: kept here for a person to look at, never lost."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?)",
                                [(e["seq"], e["event_id"], json.dumps(e), error, time.time()) for e in events])
            self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(e["seq"],) for e in events])

    def outbox_depth(self) -> int:
        """The outbox's length from its first and last sequence numbers: cheap on every event."""
        first, last = self.db.execute("SELECT min(seq), max(seq) FROM outbox").fetchone()
        return 0 if first is None else last - first + 1

    def outbox_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
