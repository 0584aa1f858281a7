"""The add-on's memory across files and launches: the job file, the owner identity and the cache limits.

Free of bpy, so it can be tested and used from any Python.

* **The job file** (``jobs.json`` in the extension's user folder) holds one
  record per job: everything needed to show it again, resume its event
  stream, import its result where the artist asked and recall its settings.
  The panel's job list is only a view of it, rebuilt when a file is loaded,
  on Connect and at start-up. Writes are atomic (a temporary file, then a
  rename), so a crash never leaves half a file.
* **The owner identity** (``owner`` in the same folder) is the session id
  the backend files this Blender's jobs under. It is created once and read
  on every launch, so jobs stay this user's whatever happens to the
  preferences (Auto-Save Preferences off, a reset, another .blend).
* **The cache** (results, previews and input copies) is pruned by age and
  by total size, oldest first, never touching the files of an unfinished job.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNFINISHED = ("sending", "unsent", "queued", "running", "cancelling", "downloading")
"""Job states whose files the cache limits never remove (the job still needs them)."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class JobFile:
    """``{job_id: record}`` in one JSON file; records are plain dicts of JSON values.

    :meth:`save_soon` keeps the records in memory and writes them on a thread of their own (the latest
    version wins; a slow disk never holds up the caller); :meth:`load` and :meth:`flush` wait for that write.
    One instance per path (:meth:`at`) shares the memory and the thread.
    """

    _instances: dict[Path, JobFile] = {}
    _instances_lock = threading.Lock()

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._wanted: dict[str, dict[str, Any]] | None = None
        self._written = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self.errors: list[str] = []
        """Write errors, for the host to show (the previous file stays intact)."""

    @classmethod
    def at(cls, path: str | Path) -> JobFile:
        key = Path(path).resolve()
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls(key)
            return cls._instances[key]

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            try:
                os.replace(self.path, self.path.with_name(self.path.name + ".bad"))
            except OSError:
                pass
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    def load(self) -> dict[str, dict[str, Any]]:
        """Every record, as on disk (after any pending write); an unreadable file reads as empty and is
        kept aside as ``jobs.json.bad``."""
        self.flush()
        records = self._read()
        self._cache = copy.deepcopy(records)
        return records

    def load_cached(self) -> dict[str, dict[str, Any]]:
        """A copy of the records as last loaded or saved here (reads the file only the first time)."""
        if self._cache is None:
            return self.load()
        return copy.deepcopy(self._cache)

    def peek(self) -> dict[str, dict[str, Any]]:
        """The records as last loaded or saved here, without a copy: read them, never change them (a long
        job list is not copied for a look)."""
        if self._cache is None:
            self.load()
        return self._cache

    def merge_soon(self, changes: dict[str, dict[str, Any]]) -> None:
        """Merge each of ``changes`` into its record (a new one gets ``created``) and save soon. Only the
        changed records are copied, so a save costs what changed, not the length of the job list."""
        base = self.peek()
        snapshot = dict(base)  # records are never changed in place: sharing the unchanged ones is safe
        now = time.time()
        for job_id, fields in changes.items():
            snapshot[job_id] = {**(base.get(job_id) or {"created": now}), **copy.deepcopy(fields)}
        self._publish(snapshot)

    def save(self, records: dict[str, dict[str, Any]]) -> None:
        """Write now."""
        self.save_soon(records)
        self.flush()

    def save_soon(self, records: dict[str, dict[str, Any]]) -> None:
        """Remember ``records`` and have them written on the writer thread."""
        self._publish(copy.deepcopy(records))  # never changed afterwards: load_cached hands out copies

    def _publish(self, snapshot: dict[str, dict[str, Any]]) -> None:
        self._cache = snapshot
        with self._lock:
            self._wanted = snapshot
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="mpod123-jobfile", daemon=True)
                self._writer.start()
            self._written.notify_all()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until what was saved is on disk."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._wanted is not None and time.monotonic() < deadline:
                self._written.wait(0.05)

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                records = self._wanted
                if records is None:
                    self._writer = None
                    return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.path, json.dumps(records, indent=1, sort_keys=True))
            except OSError as exc:
                self.errors.append(f"cannot write {self.path}: {exc}")
            with self._lock:
                if self._wanted is records:
                    self._wanted = None
                self._written.notify_all()

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into one record (created if needed) and save soon; returns the record."""
        records = self.load_cached()
        record = records.setdefault(job_id, {"created": time.time()})
        record.update(fields)
        self.save_soon(records)
        return record

    def remove(self, job_ids: Iterable[str]) -> None:
        records = self.load_cached()
        for job_id in job_ids:
            records.pop(job_id, None)
        self.save_soon(records)


def flush_all() -> None:
    """Finish every pending job-file write (registered with atexit: Blender quits without disabling add-ons)."""
    for jf in list(JobFile._instances.values()):
        jf.flush(5.0)


atexit.register(flush_all)


def owner_id(folder: str | Path) -> str:
    """This installation's stable identity on the backend, created once in ``folder/owner``."""
    path = Path(folder) / "owner"
    try:
        text = path.read_text().strip()
        if len(text) >= 16 and text.isalnum():
            return text
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    try:  # the first writer wins when two Blenders start at once
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new)
        return new
    except FileExistsError:
        text = path.read_text().strip()
        if len(text) >= 16 and text.isalnum():
            return text
        _write_atomic(path, new)  # an unreadable identity is replaced
        return new


@dataclass(frozen=True)
class CacheLimits:
    """How much the add-on keeps of results, previews and input copies: 0 means no limit."""

    max_bytes: int = 0
    max_age_s: float = 0.0


def job_files(folders: Iterable[Path], job_id: str) -> list[Path]:
    """The cache files of one job (they are all named after its id)."""
    out = []
    for folder in folders:
        if folder.is_dir():
            out += [p for p in folder.iterdir() if p.name.startswith(job_id) and p.is_file()]
    return out


def prune_cache(folders: Iterable[Path], records: dict[str, dict[str, Any]], limits: CacheLimits,
                now: float | None = None) -> list[Path]:
    """Delete cache files older than the age limit, then the oldest until under the size limit.

    Files of an unfinished job (state in :data:`UNFINISHED`) are never deleted. Returns what was deleted.
    """
    now = time.time() if now is None else now
    keep = {job_id for job_id, r in records.items() if r.get("state") in UNFINISHED}
    files = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not p.is_file() or p.name.endswith(".part"):
                continue
            if any(p.name.startswith(job_id) for job_id in keep):
                continue
            st = p.stat()
            files.append((st.st_mtime, st.st_size, p))
    files.sort()
    deleted = []
    if limits.max_age_s > 0:
        for mtime, _size, p in files:
            if now - mtime > limits.max_age_s:
                deleted.append(p)
    if limits.max_bytes > 0:
        left = [f for f in files if f[2] not in deleted]
        total = sum(size for _m, size, _p in left)
        for _mtime, size, p in left:
            if total <= limits.max_bytes:
                break
            deleted.append(p)
            total -= size
    gone = []
    for p in deleted:
        try:
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone
