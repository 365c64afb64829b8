"""The daemon's catalogue: an SQLite database of what it received, learned, decided and wrote.

File: ``<state_dir>/catalogue.sqlite3`` (:data:`CATALOGUE_NAME`), in WAL mode so that other processes (the
TUI, ``refscope status``) can read while the daemon writes. Every public method is one transaction: a crash,
even SIGKILL, leaves either the whole row(s) or nothing (SQLite's journal guarantees it; ``synchronous=FULL``
also makes committed rows survive a power cut). One connection is shared by all threads under a lock.

Tables:

* ``frames`` -- one row per input, keyed by its unique ``source`` (file path or ``zmq:<endpoint>#<seq>``):
  file ``size`` (bytes) and ``mtime`` (unix seconds) when it is a file, ``role``, ``seq``, acquisition time
  ``t`` (unix seconds), ``status`` (``received`` | ``enhanced`` | ``rejected``), ``output_path``, ``error``,
  ``updated`` (unix seconds);
* ``pairs`` -- HR/LR pairs learned from: ``hr_source``, ``lr_source``, ``geometry`` (JSON), ``score``, ``t``;
* ``events`` -- ``type``, ``t``, ``payload`` (JSON);
* ``refused`` -- input files the folder source refused for good (not an image, truncated, too large, a link out
  of the watched folder...): ``source``, ``size``, ``mtime``, ``reason`` (code), ``error`` (message), ``t``; a
  restart does not read this version of them again (:meth:`Catalogue.refused`);
* ``learned`` -- HR references the learner is done with: ``source``, ``size``, ``mtime``, ``outcome``
  (``learned`` | ``rejected`` | ``quarantined``), ``t``; written only after what the reference produced is saved,
  so a reference handed to the learner but not in this table is learned again after a restart;
* ``models`` -- fitted models: ``version``, ``kind``, ``method``, ``library_size``, ``scores`` (JSON),
  ``promoted`` (0/1), ``reason``, ``t``.

Restart rule: a frame is not processed again when :meth:`Catalogue.already_enhanced` says that this version
of it -- same source, same file size and modification time (both None for ZMQ frames) -- was already written
out. A file the microscope rewrites under the same name is a new version and is processed again.

Names: any name the file system allows is stored losslessly. A name that is valid UTF-8 is stored as TEXT; one
that is not (``os.fsdecode`` gives it lone surrogates, e.g. ``b'ref\xff_HR.tif'`` -> ``'ref\udcff_HR.tif'``) is
stored as a BLOB of its file-system bytes (``os.fsencode``) and given back decoded (``os.fsdecode``): the same
``str`` comes back, and lookups, pairs and the restart rule work on it. JSON payloads escape such characters
(``\udcff``), which ``json.loads`` restores.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..atomic import to_jsonable
from ..errors import StateError

__all__ = [
    "CATALOGUE_NAME",
    "SCHEMA_VERSION",
    "FRAME_STATUSES",
    "FrameStatus",
    "FrameRecord",
    "PairRecord",
    "EventRecord",
    "ModelRecord",
    "CatalogueCounts",
    "Catalogue",
]

CATALOGUE_NAME = "catalogue.sqlite3"
"""File name of the catalogue inside the state folder."""

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; a catalogue from a newer refscope is refused."""

FrameStatus = Literal["received", "enhanced", "rejected"]
FRAME_STATUSES: tuple[str, ...] = ("received", "enhanced", "rejected")

_MTIME_TOLERANCE_S = 1e-6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    size INTEGER,
    mtime REAL,
    role TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('received', 'enhanced', 'rejected')),
    output_path TEXT,
    error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_status ON frames (status);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    hr_source TEXT NOT NULL,
    lr_source TEXT NOT NULL,
    geometry TEXT NOT NULL,
    score REAL,
    t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    t REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_t ON events (t);
CREATE TABLE IF NOT EXISTS refused (
    source TEXT PRIMARY KEY,
    size INTEGER,
    mtime REAL,
    reason TEXT NOT NULL,
    error TEXT,
    t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS learned (
    source TEXT PRIMARY KEY,
    size INTEGER,
    mtime REAL,
    outcome TEXT NOT NULL,
    t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    method TEXT NOT NULL,
    library_size INTEGER,
    scores TEXT NOT NULL,
    promoted INTEGER NOT NULL CHECK (promoted IN (0, 1)),
    reason TEXT,
    t REAL NOT NULL
);
"""


@dataclass(frozen=True)
class FrameRecord:
    """A row of ``frames`` (sizes in bytes, times in unix seconds)."""

    source: str
    size: int | None
    mtime: float | None
    role: str
    seq: int
    t: float
    status: FrameStatus
    output_path: Path | None
    error: str | None
    updated: float


@dataclass(frozen=True)
class PairRecord:
    """A row of ``pairs``; ``geometry`` decoded from JSON."""

    id: int
    hr_source: str
    lr_source: str
    geometry: Mapping[str, Any]
    score: float | None
    t: float


@dataclass(frozen=True)
class EventRecord:
    """A row of ``events``; ``payload`` decoded from JSON."""

    id: int
    type: str
    t: float
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class ModelRecord:
    """A row of ``models``; ``scores`` decoded from JSON."""

    id: int
    version: str
    kind: str
    method: str
    library_size: int | None
    scores: Mapping[str, Any]
    promoted: bool
    reason: str | None
    t: float


@dataclass(frozen=True)
class CatalogueCounts:
    """Row counts: ``frames`` by status (every status present, 0 if none), pairs, events, models, promoted."""

    frames: Mapping[str, int]
    pairs: int
    events: int
    models: int
    promoted_models: int


def _json(obj: Any, what: str) -> str:
    """``obj`` as compact JSON text; non-ASCII characters as themselves unless the text would not be valid UTF-8
    (a file name's lone surrogates): then every non-ASCII character is escaped (``json.loads`` restores them)."""
    try:
        text = json.dumps(obj, allow_nan=False, default=to_jsonable, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj, allow_nan=False, default=to_jsonable, separators=(",", ":"), ensure_ascii=True)
        return text
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable ({exc})") from exc


def _name(value: str | os.PathLike[str]) -> str | bytes:
    """A source or file name as stored: the ``str`` itself when it is valid UTF-8, else its file-system bytes
    (``os.fsencode``: a BLOB) -- see "Names" in the module docstring. ValueError for a string that no file
    name decodes to (a lone surrogate outside U+DC80..U+DCFF)."""
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(text)
    except UnicodeEncodeError as exc:
        raise ValueError(f"name {text!r} cannot be stored in the catalogue (not a file-system name: {exc})") from exc


def _text(value: str) -> str | bytes:
    """Free text (an error message, which names a file) as stored: like :func:`_name`, but never failing (a
    character no file name has is replaced by a backslash escape)."""
    try:
        return _name(value)
    except ValueError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _loaded(value: Any) -> Any:
    """A stored name or text back as ``str`` (BLOBs decoded with ``os.fsdecode``); other values unchanged."""
    return os.fsdecode(bytes(value)) if isinstance(value, (bytes, memoryview)) else value


def _now(t: float | None) -> float:
    return time.time() if t is None else float(t)


class Catalogue:
    """The SQLite catalogue (see the module docstring).

    Args:
        path: the database file (``<state_dir>/catalogue.sqlite3``), or an existing folder to hold it (see
            also :meth:`in_state_dir`); missing parent folders are created.
        busy_timeout_s: how long a write waits for another process holding the database lock, seconds.

    Raises :class:`~refscope.daemon.errors.StateError` naming the file when it is not a usable catalogue.
    Thread-safe; close with :meth:`close` (or use as a context manager).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        target = Path(os.path.abspath(Path(path).expanduser()))
        if target.is_dir():
            target = target / CATALOGUE_NAME
        self.path = target
        self._lock = threading.RLock()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{target.parent}: cannot create the state folder ({exc.strerror or exc})") from exc
        try:
            conn = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StateError(f"{target}: cannot open the catalogue ({exc})") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{target}: catalogue schema version {version} was written by a newer refscope "
                    f"(this one reads version {SCHEMA_VERSION})"
                )
            with self._transaction() as cur:
                had_frames = cur.execute("SELECT 1 FROM sqlite_master WHERE name = 'frames'").fetchone() is not None
                had_learned = cur.execute("SELECT 1 FROM sqlite_master WHERE name = 'learned'").fetchone() is not None
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                if had_frames and not had_learned:  # written by an older refscope: its references count as done
                    cur.execute("INSERT OR IGNORE INTO learned (source, size, mtime, outcome, t) SELECT source, size, "
                                "mtime, 'learned', updated FROM frames WHERE role IN ('hr', 'both')")
                cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            raise StateError(f"{target}: not a usable refscope catalogue ({exc})") from exc
        except BaseException:
            conn.close()
            self._conn = None
            raise

    @classmethod
    def in_state_dir(cls, state_dir: str | os.PathLike[str], **options: Any) -> Catalogue:
        """The catalogue ``<state_dir>/catalogue.sqlite3`` (folders created as needed)."""
        return cls(Path(state_dir) / CATALOGUE_NAME, **options)

    # --------------------------------------------------------------------------------------- plumbing

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One immediate (write-locking) transaction, committed on success and rolled back on error."""
        with self._lock:
            conn = self._connection()
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"{self.path}: catalogue is closed")
        return self._conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: catalogue query failed ({exc})") from exc

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one statement in its own transaction; return the last row id."""
        try:
            with self._transaction() as cur:
                cur.execute(sql, params)
                return int(cur.lastrowid or 0)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: catalogue write failed ({exc})") from exc

    def close(self) -> None:
        """Close the database connection (checkpointing the WAL). Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- frames

    def record_frame(
        self,
        source: str,
        *,
        role: str,
        seq: int,
        t: float,
        size: int | None = None,
        mtime: float | None = None,
        status: FrameStatus = "received",
        error: str | None = None,
    ) -> None:
        """Record that a frame was received (``size`` in bytes and ``mtime`` in unix seconds for files).

        If ``source`` is already known with the same ``size`` and ``mtime``, only role, seq and t are
        updated and its status is kept (an enhanced frame stays enhanced); a different size or mtime is a new
        version of the file: the row is reset to ``status`` with no output.
        """
        if status not in FRAME_STATUSES:
            raise ValueError(f"{source}: frame status must be one of {FRAME_STATUSES}, got {status!r}")
        now = time.time()
        key = _name(source)
        params = (key, size, mtime, str(role), int(seq), float(t), status, None if error is None else _text(error), now)
        try:
            with self._transaction() as cur:
                row = cur.execute("SELECT size, mtime FROM frames WHERE source = ?", (key,)).fetchone()
                if row is not None and self._same_version(row[0], row[1], size, mtime):
                    cur.execute("UPDATE frames SET role = ?, seq = ?, t = ?, updated = ? WHERE source = ?",
                                (str(role), int(seq), float(t), now, key))
                else:
                    cur.execute(
                        "INSERT INTO frames (source, size, mtime, role, seq, t, status, error, updated) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (source) DO UPDATE SET size = excluded.size, mtime = excluded.mtime, "
                        "role = excluded.role, seq = excluded.seq, t = excluded.t, status = excluded.status, "
                        "output_path = NULL, error = excluded.error, updated = excluded.updated",
                        params,
                    )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: catalogue write failed ({exc})") from exc

    @staticmethod
    def _same_version(size_a: int | None, mtime_a: float | None, size_b: int | None, mtime_b: float | None) -> bool:
        if size_a != size_b:
            return False
        if mtime_a is None or mtime_b is None:
            return mtime_a is None and mtime_b is None
        return math.isclose(float(mtime_a), float(mtime_b), rel_tol=0, abs_tol=_MTIME_TOLERANCE_S)

    def _set_status(self, source: str, status: FrameStatus, output_path: str | None, error: str | None) -> None:
        try:
            with self._transaction() as cur:
                cur.execute("UPDATE frames SET status = ?, output_path = ?, error = ?, updated = ? WHERE source = ?",
                            (status, None if output_path is None else _name(output_path),
                             None if error is None else _text(error), time.time(), _name(source)))
                if cur.rowcount == 0:
                    raise ValueError(f"{self.path}: frame {source!r} was never recorded (call record_frame first)")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: catalogue write failed ({exc})") from exc

    def mark_enhanced(self, source: str, output_path: str | os.PathLike[str] | None) -> None:
        """Set a recorded frame's status to ``enhanced`` with the file written (None: streamed only).
        ValueError if ``source`` was never recorded."""
        self._set_status(source, "enhanced", os.fspath(output_path) if output_path is not None else None, None)

    def mark_rejected(self, source: str, error: str) -> None:
        """Set a recorded frame's status to ``rejected`` with the reason. ValueError if never recorded."""
        self._set_status(source, "rejected", None, str(error))

    def already_enhanced(self, source: str, size: int | None, mtime: float | None) -> bool:
        """True when this version of ``source`` (same size in bytes and mtime in unix seconds; None for both
        with ZMQ frames) was already enhanced and written out: the restart rule (module docstring)."""
        rows = self._query("SELECT size, mtime FROM frames WHERE source = ? AND status = 'enhanced'", (_name(source),))
        return bool(rows) and self._same_version(rows[0][0], rows[0][1], size, mtime)

    def frame(self, source: str) -> FrameRecord | None:
        """The row of ``source``, or None."""
        rows = self._query(
            "SELECT source, size, mtime, role, seq, t, status, output_path, error, updated FROM frames WHERE source = ?",
            (_name(source),),
        )
        if not rows:
            return None
        r = rows[0]
        return FrameRecord(source=_loaded(r[0]), size=r[1], mtime=r[2], role=r[3], seq=r[4], t=r[5], status=r[6],
                           output_path=Path(_loaded(r[7])) if r[7] is not None else None, error=_loaded(r[8]),
                           updated=r[9])

    # -------------------------------------------------------------------------------- refused inputs

    def record_refused(self, source: str, *, size: int | None, mtime: float | None, reason: str, error: str) -> None:
        """Record that this version of input file ``source`` (``size`` in bytes, ``mtime`` in unix seconds) was
        refused for good: ``reason`` is the reason code (``"unreadable"``, ``"symlink_outside"``...), ``error`` the
        message that was logged (it names the file and never quotes its content). Replaces an older version."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"{source!r}: refusal reason must be a non-empty string, got {reason!r}")
        self._write(
            "INSERT INTO refused (source, size, mtime, reason, error, t) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
            "(source) DO UPDATE SET size = excluded.size, mtime = excluded.mtime, reason = excluded.reason, "
            "error = excluded.error, t = excluded.t",
            (_name(source), size, mtime, reason, _text(str(error)), time.time()))

    def refused(self, source: str, size: int | None, mtime: float | None) -> str | None:
        """The reason code this version of ``source`` was refused with (see :meth:`record_refused`), or None
        when it was not (or another version was): a restart does not read a refused file again until it changes."""
        rows = self._query("SELECT size, mtime, reason FROM refused WHERE source = ?", (_name(source),))
        if not rows or not self._same_version(rows[0][0], rows[0][1], size, mtime):
            return None
        return str(rows[0][2])

    # ------------------------------------------------------------------------------------ references

    def mark_learned(self, source: str, *, size: int | None, mtime: float | None, outcome: str) -> None:
        """Record that the learner is done with this version of HR reference ``source`` (``size`` in bytes and
        ``mtime`` in unix seconds for files, None for messages): ``outcome`` is ``"learned"`` (its pair and, when
        promoted, the library were saved first), ``"rejected"`` (it could not be used) or ``"quarantined"`` (the
        learner failed on it). Call it only once the state that includes the reference is durably saved."""
        self._write(
            "INSERT INTO learned (source, size, mtime, outcome, t) VALUES (?, ?, ?, ?, ?) ON CONFLICT (source) DO "
            "UPDATE SET size = excluded.size, mtime = excluded.mtime, outcome = excluded.outcome, t = excluded.t",
            (_name(source), size, mtime, str(outcome), time.time()))

    def learned(self, source: str, size: int | None, mtime: float | None) -> str | None:
        """The learner's outcome for this version of reference ``source`` (see :meth:`mark_learned`), or None
        when it was never finished (handed over, then the daemon stopped or was killed: learn it again)."""
        rows = self._query("SELECT size, mtime, outcome FROM learned WHERE source = ?", (_name(source),))
        if not rows or not self._same_version(rows[0][0], rows[0][1], size, mtime):
            return None
        return str(rows[0][2])

    # ------------------------------------------------------------------------------- pairs, events, models

    def record_pair(
        self, hr_source: str, lr_source: str, geometry: Mapping[str, Any], score: float | None = None,
        *, t: float | None = None,
    ) -> int:
        """Record an HR/LR pair learned from (``geometry``: JSON-serialisable registration; ``t``: unix
        seconds, default now); return its id."""
        return self._write(
            "INSERT INTO pairs (hr_source, lr_source, geometry, score, t) VALUES (?, ?, ?, ?, ?)",
            (_name(hr_source), _name(lr_source), _json(dict(geometry), f"pair {hr_source!r} / {lr_source!r}: geometry"),
             None if score is None else float(score), _now(t)),
        )

    def record_event(self, type: str, payload: Mapping[str, Any] | None = None, *, t: float | None = None) -> int:
        """Record an event (``t``: unix seconds, default now); return its id."""
        if not isinstance(type, str) or not type:
            raise ValueError(f"event type must be a non-empty string, got {type!r}")
        return self._write("INSERT INTO events (type, t, payload) VALUES (?, ?, ?)",
                           (type, _now(t), _json(dict(payload or {}), f"event {type!r}: payload")))

    def record_model(
        self,
        version: str,
        *,
        kind: str,
        method: str,
        library_size: int | None,
        scores: Mapping[str, Any],
        promoted: bool,
        reason: str | None = None,
        t: float | None = None,
    ) -> int:
        """Record a fitted model and whether it was promoted (with the reason); return its id."""
        return self._write(
            "INSERT INTO models (version, kind, method, library_size, scores, promoted, reason, t) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (str(version), str(kind), str(method), None if library_size is None else int(library_size),
             _json(dict(scores), f"model {version}: scores"), int(bool(promoted)),
             None if reason is None else _text(str(reason)), _now(t)),
        )

    def recent_events(self, n: int) -> list[EventRecord]:
        """The ``n`` latest events, oldest first."""
        rows = self._query("SELECT id, type, t, payload FROM events ORDER BY id DESC LIMIT ?", (max(0, int(n)),))
        return [EventRecord(id=r[0], type=r[1], t=r[2], payload=json.loads(r[3])) for r in reversed(rows)]

    def pairs(self) -> list[PairRecord]:
        """Every recorded pair, oldest first."""
        rows = self._query("SELECT id, hr_source, lr_source, geometry, score, t FROM pairs ORDER BY id")
        return [PairRecord(id=r[0], hr_source=_loaded(r[1]), lr_source=_loaded(r[2]), geometry=json.loads(r[3]),
                           score=r[4], t=r[5]) for r in rows]

    def model_history(self) -> list[ModelRecord]:
        """Every recorded model, oldest first."""
        rows = self._query(
            "SELECT id, version, kind, method, library_size, scores, promoted, reason, t FROM models ORDER BY id"
        )
        return [ModelRecord(id=r[0], version=r[1], kind=r[2], method=r[3], library_size=r[4],
                            scores=json.loads(r[5]), promoted=bool(r[6]), reason=_loaded(r[7]), t=r[8])
                for r in rows]

    def counts(self) -> CatalogueCounts:
        """Row counts (frames by status)."""
        by_status = dict.fromkeys(FRAME_STATUSES, 0)
        for status, count in self._query("SELECT status, COUNT(*) FROM frames GROUP BY status"):
            by_status[status] = count
        pairs = self._query("SELECT COUNT(*) FROM pairs")[0][0]
        events = self._query("SELECT COUNT(*) FROM events")[0][0]
        models, promoted = self._query("SELECT COUNT(*), COALESCE(SUM(promoted), 0) FROM models")[0]
        return CatalogueCounts(frames=by_status, pairs=pairs, events=events, models=models, promoted_models=promoted)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result: ``"ok"`` for a sound database."""
        return "; ".join(str(r[0]) for r in self._query("PRAGMA integrity_check"))
