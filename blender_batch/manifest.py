"""The batch manifest: what happened to each photo, so that a rerun picks up where the last run stopped.

One JSON file in the assets folder (``mpod123-batch.json``), rewritten
atomically (a temporary file in the same folder, fsynced, then renamed) after
every change of state, so a batch killed at any moment leaves either the old
or the new manifest, never half of one.

Entries are keyed by the photo's content sha256, so renaming a photo does not
redo it. Each entry records the source file name, the asset name, the
settings key, the job id of the latest attempt, the state, the number of
attempts, the result's sha256, the output .blend, the last error and a short
history (``[run, what, time]``) that tells which run did what.

States: ``pending`` (nothing submitted), ``submitted`` (a job is on the
backend), ``fetched`` (its GLB is here, not yet converted), ``done`` (the
.blend is written) and ``failed`` (attempts used up; ``error`` says why).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

MANIFEST_NAME = "mpod123-batch.json"
VERSION = 1
STATES = ("pending", "submitted", "fetched", "done", "failed")
HISTORY_LIMIT = 50


class ManifestError(ValueError):
    """The manifest cannot be read; the message says what to do."""


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable digest of the settings that change a result (job options)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def job_id_for(photo_sha256: str, key: str, attempt: int) -> str:
    """The job id of one attempt: the same photo, settings and attempt always give the same id,
    so the backend's idempotent submit turns a repeated submit into a no-op."""
    digest = hashlib.sha256(f"mpod123-batch/{photo_sha256}/{key}/{attempt}".encode()).hexdigest()
    return f"batch-{digest[:32]}"


def file_mode(path: Path) -> int:
    """The mode a new file would get (mkstemp makes 0600 files), or the existing file's."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class Manifest:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ManifestError(
                    f"cannot read the batch manifest {self.path} ({exc}); move it away to start the batch afresh"
                ) from None
            if data.get("version") != VERSION:
                raise ManifestError(f"{self.path} has version {data.get('version')}, this tool writes {VERSION}")
        else:
            data = {"version": VERSION, "session": uuid.uuid4().hex, "runs": 0, "photos": {}}
        self.data = data
        self.run = int(data.get("runs", 0)) + 1
        data["runs"] = self.run

    @property
    def session(self) -> str:
        """A session name kept across runs: without CURVE the backend files jobs under it."""
        return self.data["session"]

    @property
    def photos(self) -> dict[str, dict[str, Any]]:
        return self.data["photos"]

    def known_names(self) -> dict[str, str]:
        return {sha: e["name"] for sha, e in self.photos.items() if e.get("name")}

    def entry(self, sha256: str) -> dict[str, Any] | None:
        return self.photos.get(sha256)

    def ensure(self, sha256: str, source: str, name: str, key: str) -> dict[str, Any]:
        """The entry of a photo, made (or reset, when the settings changed) as needed."""
        e = self.photos.get(sha256)
        if e is None or e.get("settings_key") != key:
            history = (e or {}).get("history", [])
            if e is not None:
                history.append([self.run, f"settings changed ({e.get('settings_key')} -> {key}): redo", time.time()])
            e = self.photos[sha256] = {
                "source": source, "name": name, "settings_key": key, "state": "pending", "job_id": None,
                "attempts": 0, "result_sha256": None, "glb": None, "blend": None, "error": None, "history": history,
            }
        e["source"], e["name"] = source, name
        return e

    def log(self, entry: dict[str, Any], what: str) -> None:
        entry["history"] = (entry.get("history", []) + [[self.run, what, round(time.time(), 3)]])[-HISTORY_LIMIT:]

    def drop_name(self, name: str, keep: set[str]) -> None:
        """Forget entries (not in ``keep``) that use ``name``: their asset file now belongs to another photo."""
        for sha in [s for s, e in self.photos.items() if e.get("name", "").lower() == name.lower() and s not in keep]:
            del self.photos[sha]

    def save(self) -> None:
        self.data["updated"] = time.time()
        write_json_atomic(self.path, self.data)
