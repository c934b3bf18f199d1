"""The agent's own SQLite file: the synced site data, the sync cursor, anti-passback state,
local pass use counts, and the outbox.

Every event is committed here before anything else happens to it; it leaves the outbox only
when the centre has acknowledged it. Nothing is ever dropped: a large outbox raises an alarm.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from gatehouse.edge.v1 import edge_pb2 as pb
from services.access import rules
from services.access.rules import Credential

SCHEMA_VERSION = "2"
ITEM_KEYS = {"group": "group_id", "time_profile": "profile_id", "zone": "zone_id", "lot": "lot_id", "lane": "lane_id"}
SEP = "\x1f"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (
    card_number TEXT PRIMARY KEY, person_id TEXT NOT NULL, person_name TEXT NOT NULL,
    status TEXT NOT NULL, valid_from INTEGER NOT NULL, valid_until INTEGER NOT NULL,
    gate_ids TEXT NOT NULL, group_ids TEXT NOT NULL, person_kind TEXT NOT NULL,
    max_uses INTEGER NOT NULL, uses INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lane_sessions (
    lot_id TEXT NOT NULL, plate TEXT NOT NULL, entered_at REAL NOT NULL, takes_space INTEGER NOT NULL,
    paid_fen INTEGER NOT NULL, paid_until REAL, PRIMARY KEY (lot_id, plate)
);
CREATE TABLE IF NOT EXISTS items (kind TEXT NOT NULL, key TEXT NOT NULL, payload BLOB NOT NULL,
                                  PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS passback (person_id TEXT NOT NULL, zone_id TEXT NOT NULL, direction TEXT NOT NULL,
                                     at REAL NOT NULL, PRIMARY KEY (person_id, zone_id));
CREATE TABLE IF NOT EXISTS local_uses (card_number TEXT PRIMARY KEY, uses INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vehicles (
    lot_id TEXT NOT NULL, plate TEXT NOT NULL, kind TEXT NOT NULL, valid_from TEXT NOT NULL,
    valid_until TEXT NOT NULL, grace_days INTEGER NOT NULL, free_minutes INTEGER NOT NULL,
    fixed_space INTEGER NOT NULL, holder TEXT NOT NULL, PRIMARY KEY (lot_id, plate)
) WITHOUT ROWID;
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
        self.db.execute("PRAGMA busy_timeout=5000")
        self._upgrade()
        self.db.executescript(SCHEMA)
        self.set_meta("schema", SCHEMA_VERSION)
        # The synced copy is written on its own connection without an fsync per commit: it can
        # always be fetched again, and its commits must not delay the outbox's.
        self.sync_db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.sync_db.execute("PRAGMA synchronous=NORMAL")
        self.sync_db.execute("PRAGMA busy_timeout=5000")
        # No checkpoint inside a commit: after a large sync, the next event's commit would copy
        # the whole WAL into the database first. checkpoint() does it, from another thread.
        for db in (self.db, self.sync_db):
            db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpoint_db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def _upgrade(self) -> None:
        """A file from an older agent: keep the outbox, drop the synced copy and sync it again."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            return
        version = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None or version[0] != SCHEMA_VERSION:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("DROP TABLE IF EXISTS credentials")
                self.db.execute("DELETE FROM meta WHERE key IN ('cursor', 'epoch')")

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._checkpoint_db.close()
        self.sync_db.close()
        self.db.close()

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL into the database without blocking readers or writers (PASSIVE); run it
        off the event loop. Returns (WAL frames, frames copied)."""
        _busy, frames, copied = self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, copied

    # -- credentials --------------------------------------------------------------------------

    def credential(self, card_number: str) -> Credential | None:
        row = self.db.execute("SELECT * FROM credentials WHERE card_number = ?", (card_number,)).fetchone()
        if row is None:
            return None
        return Credential(row[0], row[1], row[2], row[3], row[4], row[5],
                          gate_ids=frozenset(row[6].split(SEP)) if row[6] else frozenset(),
                          group_ids=frozenset(row[7].split(SEP)) if row[7] else frozenset(),
                          person_kind=row[8], max_uses=row[9], uses=row[10])

    def apply_changes(self, changes, cursor: int | None, epoch: str) -> bool:
        """Part of a sync batch, in one transaction; with `cursor`, the position it completes.

        A batch may be applied in several parts (so that decisions need not wait for a whole
        batch); only the last part moves the cursor. A part that starts another epoch resets the
        cursor to 0 with it, so a crash half way through a new epoch syncs everything again.
        Returns whether anything but credentials changed (the agent then reloads its policy).
        """
        credentials, items, removed, vehicles = [], [], [], []
        for change in changes:
            kind = change.WhichOneof("item")
            if kind == "credential":
                c = change.credential
                credentials.append((c.card_number, c.person_id, c.person_name, c.status, c.valid_from, c.valid_until,
                                    SEP.join(c.gate_ids), SEP.join(c.group_ids), c.person_kind or "resident",
                                    c.max_uses, c.uses))
            elif kind == "removed":
                removed.append((change.removed.kind, change.removed.key))
            elif kind == "vehicle":
                v = change.vehicle
                vehicles.append((v.lot_id, v.plate, v.kind, v.valid_from, v.valid_until, v.grace_days, v.free_minutes,
                                 int(v.fixed_space), v.holder))
            elif kind:
                message = getattr(change, kind)
                key = "" if kind == "settings" else getattr(message, ITEM_KEYS[kind])
                items.append((kind, key, message.SerializeToString()))
        db = self.sync_db
        with db:
            db.execute("BEGIN IMMEDIATE")
            current = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if epoch != (current[0] if current else ""):
                # another epoch streams everything again: its groups, profiles and zones replace
                # ours (credentials stay until overwritten: a card must not stop working while
                # the new epoch streams in, and access never deletes a card's key)
                db.execute("DELETE FROM items WHERE kind != 'settings'")
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("cursor", "0"), ("epoch", epoch)])
            db.executemany("INSERT OR REPLACE INTO credentials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", credentials)
            db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", items)
            db.executemany("INSERT OR REPLACE INTO vehicles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", vehicles)
            db.executemany("DELETE FROM items WHERE kind = ? AND key = ?", removed)
            if cursor is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('cursor', ?)", (str(cursor),))
        return bool(items or removed)

    def policy(self) -> tuple[rules.SitePolicy, dict[str, bytes]]:
        """The site's rules as synced, and the QR public keys by key id."""
        by_kind: dict[str, list[bytes]] = {}
        for kind, payload in self.db.execute("SELECT kind, payload FROM items"):
            by_kind.setdefault(kind, []).append(payload)
        settings = pb.SiteSettings.FromString(by_kind["settings"][0]) if "settings" in by_kind else pb.SiteSettings()
        groups = [pb.AccessGroup.FromString(b) for b in by_kind.get("group", ())]
        profiles = [pb.TimeProfile.FromString(b) for b in by_kind.get("time_profile", ())]
        zones = [pb.Zone.FromString(b) for b in by_kind.get("zone", ())]
        policy = rules.SitePolicy(
            timezone=settings.timezone or "UTC", holidays=frozenset(settings.holidays), emergency=settings.emergency,
            groups={g.group_id: rules.AccessGroup(g.group_id, frozenset(g.gate_ids), g.time_profile_id)
                    for g in groups},
            profiles={p.profile_id: rules.TimeProfile(p.profile_id, tuple(
                rules.Period(x.day, x.start_minute, x.end_minute) for x in p.periods)) for p in profiles},
            zones={z.zone_id: rules.Zone(z.zone_id, z.anti_passback or "none", z.timed_minutes, z.reset_minute,
                                         frozenset(z.entry_gate_ids), frozenset(z.exit_gate_ids)) for z in zones})
        return policy, {k.key_id: bytes(k.public_key) for k in settings.qr_keys}

    def vehicle_right(self, lot_id: str, plate: str) -> dict | None:
        """A plate's synced right at a lot (the lane turns it into parking rules' VehicleRight)."""
        row = self.db.execute("SELECT * FROM vehicles WHERE lot_id = ? AND plate = ?", (lot_id, plate)).fetchone()
        if row is None:
            return None
        return dict(zip(("lot_id", "plate", "kind", "valid_from", "valid_until", "grace_days", "free_minutes",
                         "fixed_space", "holder"), row, strict=True))

    def lane_session(self, lot_id: str, plate: str) -> dict | None:
        """A car this agent let in and has not let out: entry time, what was paid, until when."""
        row = self.db.execute("SELECT entered_at, takes_space, paid_fen, paid_until FROM lane_sessions "
                              "WHERE lot_id = ? AND plate = ?", (lot_id, plate)).fetchone()
        return dict(zip(("entered_at", "takes_space", "paid_fen", "paid_until"), row, strict=True)) if row else None

    def shared_occupied(self, lot_id: str) -> int:
        return self.db.execute("SELECT count(*) FROM lane_sessions WHERE lot_id = ? AND takes_space = 1",
                               (lot_id,)).fetchone()[0]

    def lane_paid(self, lot_id: str, plate: str, paid_fen: int, paid_until: float) -> bool:
        with self.db:
            self.db.execute("BEGIN")
            return self.db.execute("UPDATE lane_sessions SET paid_fen = ?, paid_until = ? WHERE lot_id = ? AND plate = ?",
                                   (paid_fen, paid_until, lot_id, plate)).rowcount > 0

    def parking(self) -> tuple[dict[str, pb.ParkingLot], dict[str, pb.Lane]]:
        """The synced lots and lanes."""
        lots = {k: pb.ParkingLot.FromString(p) for k, p in self.db.execute(
            "SELECT key, payload FROM items WHERE kind = 'lot'")}
        lanes = {k: pb.Lane.FromString(p) for k, p in self.db.execute(
            "SELECT key, payload FROM items WHERE kind = 'lane'")}
        return lots, lanes

    # -- anti-passback and pass uses --------------------------------------------------------------

    def passback(self, person_id: str, zone_id: str) -> rules.Passback | None:
        row = self.db.execute("SELECT direction, at FROM passback WHERE person_id = ? AND zone_id = ?",
                              (person_id, zone_id)).fetchone()
        return rules.Passback(*row) if row else None

    def local_uses(self, card_number: str) -> int:
        row = self.db.execute("SELECT uses FROM local_uses WHERE card_number = ?", (card_number,)).fetchone()
        return row[0] if row else 0

    @property
    def position(self) -> tuple[str, int]:
        """(epoch, cursor) of the last applied sync batch."""
        rows = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('cursor', 'epoch')").fetchall())
        return rows.get("epoch", ""), int(rows.get("cursor", 0))

    def credential_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM credentials").fetchone()[0]

    # -- outbox ---------------------------------------------------------------------------------

    def append_event(self, device_id: str, gate_id: str, kind: str, attributes: dict, offline: bool,
                     at: float | None = None, passback: tuple[str, str, str] | None = None,
                     count_use: str | None = None, lane_entry: tuple[str, str, bool] | None = None,
                     lane_exit: tuple[str, str] | None = None) -> dict:
        """Commit one event to the outbox; in the same transaction, a granted passage's
        anti-passback move (person_id, zone_id, direction) and pass use (its key)."""
        at = time.time() if at is None else at
        event = {"event_id": str(uuid.uuid4()), "device_id": device_id, "gate_id": gate_id, "kind": kind,
                 "device_time": at, "offline": offline,
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
            if passback:
                self.db.execute("INSERT OR REPLACE INTO passback VALUES (?, ?, ?, ?)", (*passback, at))
            if count_use:
                self.db.execute("INSERT INTO local_uses VALUES (?, 1) ON CONFLICT(card_number) "
                                "DO UPDATE SET uses = uses + 1", (count_use,))
            if lane_entry:      # (lot_id, plate, takes a shared space): a car let in
                self.db.execute("INSERT OR IGNORE INTO lane_sessions VALUES (?, ?, ?, ?, 0, NULL)",
                                (lane_entry[0], lane_entry[1], at, int(lane_entry[2])))
            if lane_exit:       # (lot_id, plate): a car let out
                self.db.execute("DELETE FROM lane_sessions WHERE lot_id = ? AND plate = ?", lane_exit)
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
