"""The batch: photos in, one .blend asset per photo out, resumable.

Order of work:

1. Scan the photo folder (:mod:`.scan`): bad files, duplicates and name
   collisions are reported, never fatal.
2. Read the manifest (:mod:`.manifest`). A photo whose asset is done under the
   same settings, and whose .blend still exists, is skipped. A photo whose job
   is still on the backend is reattached to (``status``, then ``resume`` from
   the backend's last sequence number, or straight to the download when it has
   finished meanwhile). A photo whose result was downloaded but not converted
   is converted. Everything else is submitted.
3. Submit with at most ``--jobs`` jobs unfinished at a time. The job id is a
   hash of the photo, the settings and the attempt number, so submitting
   again after a crash is a no-op on the backend (idempotent submit).
4. Drain the client's events: a per-job line on each stage change, the
   overall bar on each asset. On ``done``: download (sha256-checked), then
   build the .blend with bpy (:mod:`.assets`). On ``failed``/``cancelled``:
   submit a new attempt while ``--retries`` allow, else record the reason.
   A job silent for a while is asked for its status, which catches a lost
   subscription (a restarted remote backend) and re-subscribes.
5. Optionally write a library .blend linking every asset; print the summary.

The manifest is saved after each change of state, atomically.
"""

from __future__ import annotations

import fcntl
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import manifest as mf
from .catalog import ensure_catalog, normalize
from .scan import Photo, scan, tags_for

STATE_DIR = ".mpod123"
LIBRARY_NAME = "mpod123-library"
SILENCE_CHECK_S = 20.0


class BatchError(ValueError):
    """Bad arguments or an unusable folder: the message says what to change (exit code 2)."""


@dataclass
class BatchConfig:
    photos: Path
    out: Path
    server: str | None = None
    server_key: str | None = None
    client_key: str | None = None
    preset: str = "fast"
    seed: int = 0
    steps: int | None = None
    job_options: dict[str, Any] = field(default_factory=dict)
    jobs: int = 2
    catalog: str = "MPOD123"
    library: bool = False
    retries: int = 1
    tiny: bool = False
    job: str | None = None
    """Job function of the embedded backend (module:function); default: the server's."""
    timeout_s: float = 30.0
    job_timeout_s: float = 0.0
    preview_size: int = 256
    preview_engine: str = "cycles"
    progress: bool = True

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {**self.job_options, "preset": self.preset, "seed": self.seed}
        if self.steps is not None:
            opts["steps"] = self.steps
        return opts

    def validate(self) -> None:
        if not Path(self.photos).is_dir():
            raise BatchError(f"{self.photos} is not a folder of photos")
        if self.jobs < 1:
            raise BatchError("--jobs must be at least 1")
        if self.retries < 0:
            raise BatchError("--retries cannot be negative")
        if not 16 <= self.preview_size <= 1024:
            raise BatchError("--preview-size must be between 16 and 1024 pixels")
        if bool(self.server_key) != bool(self.client_key):
            raise BatchError("CURVE needs both --server-key (the server's public key) and --client-key (your .key_secret)")
        if self.server_key and not self.server:
            raise BatchError("--server-key and --client-key go with --server ADDRESS")
        for f in (self.server_key, self.client_key):
            if f and not Path(f).is_file():
                raise BatchError(f"no key file {f}")
        if self.server and (self.tiny or self.job):
            raise BatchError("--tiny and --job configure the embedded backend; a --server chooses its own job")
        try:
            normalize(self.catalog)
        except ValueError as exc:
            raise BatchError(str(exc)) from None
        if Path(self.out).resolve() == Path(self.photos).resolve():
            raise BatchError("--out must be a different folder from the photos")


@dataclass
class Outcome:
    source: str
    name: str
    status: str  # done | failed | skipped
    detail: str


@dataclass
class Track:
    photo: Photo
    entry: dict[str, Any]
    job_id: str
    tries: int
    started: float = field(default_factory=time.monotonic)
    last_event: float = field(default_factory=time.monotonic)
    stage: str = "queued"
    printed: float = 0.0


class Batch:
    def __init__(self, cfg: BatchConfig, stream: TextIO | None = None) -> None:
        self.cfg = cfg
        self.stream = stream or sys.stderr
        self.out = Path(cfg.out)
        self.state_dir = self.out / STATE_DIR
        self.results_dir = self.state_dir / "results"
        self.previews_dir = self.state_dir / "previews"
        self.outcomes: list[Outcome] = []
        self.bar = None
        self.client = None
        self.backend = None
        self.timings: list[dict[str, Any]] = []
        self.total = 0

    # ----------------------------------------------------------------- output
    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _outcome(self, source: str, name: str, status: str, detail: str) -> None:
        self.outcomes.append(Outcome(source, name, status, detail))
        if self.bar is not None and status != "skipped":
            self.bar.update(1)

    # ------------------------------------------------------------------- run
    def run(self) -> int:
        cfg = self.cfg
        cfg.validate()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.previews_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "batch.lock", "w") as lock:  # released by the kernel if we are killed
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise BatchError(f"another batch is writing to {self.out}; wait for it or choose another --out") from None
            return self._run_locked()

    def _run_locked(self) -> int:
        cfg = self.cfg
        try:  # fail early, before any job, when bpy or the importer is missing
            from . import assets
        except ImportError as exc:
            raise BatchError(f"the batch needs Blender's Python module: {exc}. Install it with: pip install 'mpod123[blender]'") from None
        try:
            assets._importer()
        except assets.AssetBuildError as exc:
            raise BatchError(f"{exc}; install the project (pip install -e .) or run from its folder") from None
        try:
            self.manifest = mf.Manifest(self.out / mf.MANIFEST_NAME)
        except mf.ManifestError as exc:
            raise BatchError(str(exc)) from None
        self.key = mf.settings_key(cfg.options())
        photos, skipped = scan(cfg.photos, self.manifest.known_names(), reserved=(LIBRARY_NAME,))
        current = {p.sha256 for p in photos}
        for s in skipped:
            self._outcome(s.source, "", "skipped", s.reason)
        todo: list[tuple[Photo, dict[str, Any]]] = []
        for photo in photos:
            self.manifest.drop_name(photo.name, keep=current)
            entry = self.manifest.ensure(photo.sha256, photo.source, photo.name, self.key)
            blend = self.out / f"{photo.name}.blend"
            if entry["state"] == "done" and blend.is_file():
                self._outcome(photo.source, photo.name, "skipped", f"already done ({blend.name})")
                continue
            if entry["state"] == "done":
                self.manifest.log(entry, "the .blend is gone: redo")
                entry["state"] = "fetched" if self._glb_ok(entry) else "pending"
            if entry["state"] == "failed":
                entry["state"] = "pending"
            todo.append((photo, entry))
        self.manifest.save()
        self.catalog_id = ensure_catalog(self.out, cfg.catalog)
        try:
            if todo:
                self._process(todo)
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if self.client is not None:
                self.client.close()
            if self.backend is not None:
                self.backend.stop()
            self.manifest.data["last_run"] = [o.__dict__ for o in self.outcomes]
            self.manifest.save()
        if cfg.library:
            self._library(photos)
        self.manifest.data["last_run"] = [o.__dict__ for o in self.outcomes]
        self.manifest.save()
        return 1 if any(o.status == "failed" for o in self.outcomes) else 0

    # ------------------------------------------------------------ processing
    def _connect(self) -> None:
        from backend.client import BackendError, BackendTimeout

        from .service import EmbeddedBackend, make_client

        cfg = self.cfg
        if cfg.server:
            endpoint = cfg.server
        else:
            workers = max(1, min(cfg.jobs, 4))
            self.say(f"starting a local backend ({'tiny models' if cfg.tiny else cfg.job or 'default job'}, {workers} worker(s))")
            self.backend = EmbeddedBackend.start(self.state_dir / "backend", tiny=cfg.tiny, workers=workers, job=cfg.job)
            endpoint = self.backend.endpoint
            (self.state_dir / "backend.pid").write_text(f"{self.backend.proc.pid}\n")
        self.client = make_client(endpoint, self.manifest.session, cfg.timeout_s, cfg.server_key, cfg.client_key)
        try:
            hello = self.client.hello()
        except (BackendTimeout, BackendError) as exc:
            raise ConnectionError(f"cannot talk to the backend at {endpoint}: {exc}") from None
        self.say(f"backend {endpoint}: {hello.get('server', '?')} {hello.get('version', '')}, job {hello.get('job', '?')}")

    def _process(self, todo: list[tuple[Photo, dict[str, Any]]]) -> None:
        from tqdm import tqdm

        from backend.client import BackendError

        cfg = self.cfg
        self._connect()
        interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=len(todo), desc="assets", unit="asset", file=self.stream, dynamic_ncols=True,
                        disable=not (cfg.progress and interactive))
        self.total = len(todo)
        self.queue: deque[tuple[Photo, dict[str, Any], int, bool]] = deque()
        self.inflight: dict[str, Track] = {}
        for photo, entry in todo:
            if entry["state"] == "fetched" and self._glb_ok(entry):
                self._convert(photo, entry, entry["job_id"])
            elif entry["state"] in ("submitted", "fetched") and entry.get("job_id"):  # fetched: the GLB is gone
                self._reattach(photo, entry)
            else:
                self.queue.append((photo, entry, 0, False))
        last_check = time.monotonic()
        while self.queue or self.inflight:
            while self.queue and len(self.inflight) < cfg.jobs:
                photo, entry, tries, same_id = self.queue.popleft()
                self._submit(photo, entry, tries, same_id)
            events = self.client.drain()
            for msg in events:
                self._on_event(msg)
            if not events and self.inflight:
                self.client.sock.poll(200)
            now = time.monotonic()
            if now - last_check > 5.0:
                last_check = now
                if self.backend is not None and self.backend.proc.poll() is not None:
                    from .service import ServiceError

                    raise ServiceError(f"the local backend exited (code {self.backend.proc.returncode}); see "
                                       f"{self.backend.log}. Run the batch again to continue")
                for job_id, track in list(self.inflight.items()):
                    if cfg.job_timeout_s and now - track.started > cfg.job_timeout_s:
                        try:
                            self.client.cancel(job_id)
                        except BackendError:
                            pass
                        del self.inflight[job_id]
                        self._failed(track, f"timed out after {cfg.job_timeout_s:.0f} s (cancelled)", retry=False)
                    elif now - track.last_event > SILENCE_CHECK_S:
                        self._check_silent(track)

    def _glb_ok(self, entry: dict[str, Any]) -> bool:
        from backend.protocol import file_digest

        glb = entry.get("glb")
        if not glb or not (self.out / glb).is_file() or not entry.get("result_sha256"):
            return False
        return file_digest(self.out / glb)[0] == entry["result_sha256"]

    def _submit(self, photo: Photo, entry: dict[str, Any], tries: int, same_id: bool = False) -> None:
        import hashlib

        from backend.client import BackendError

        try:
            data = photo.path.read_bytes()
        except OSError as exc:
            return self._give_up(photo, entry, f"unreadable: {exc.strerror or exc}")
        if hashlib.sha256(data).hexdigest() != photo.sha256:
            return self._give_up(photo, entry, "the file changed during the batch; run the batch again")
        if not same_id or not entry.get("attempts"):
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
        job_id = mf.job_id_for(photo.sha256, self.key, entry["attempts"])
        try:
            self.client.submit(data, self.cfg.options(), job_id=job_id)
        except BackendError as exc:
            return self._give_up(photo, entry, f"submit refused: {exc}")
        entry.update(state="submitted", job_id=job_id, error=None)
        self.manifest.log(entry, f"submitted {job_id}")
        self.manifest.save()
        track = self.inflight[job_id] = Track(photo, entry, job_id, tries + 1)
        self._line(track, f"submitted (attempt {entry['attempts']}, job {job_id})")

    def _reattach(self, photo: Photo, entry: dict[str, Any]) -> None:
        from backend.client import BackendError

        job_id = entry["job_id"]
        try:
            st = self.client.status(job_id)
        except BackendError as exc:
            if exc.ename != "UnknownJob":
                raise
            self.manifest.log(entry, f"{job_id} unknown to the backend: submit again")
            entry["state"] = "pending"
            self.queue.append((photo, entry, 0, True))  # the same attempt again, under the same id
            return
        track = Track(photo, entry, job_id, 1, stage=st["state"])
        self.manifest.log(entry, f"reattached to {job_id} ({st['state']})")
        self.manifest.save()
        if st["state"] == "done":
            self._line(track, "finished while the batch was away")
            self._done(track)
        elif st["state"] in ("failed", "cancelled"):
            self._failed(track, st.get("error") or st["state"])
        else:
            self.inflight[job_id] = track
            self.client.resume(job_id, st["last_seq"])
            self._line(track, f"reattached ({st['state']}, job {job_id})")

    def _check_silent(self, track: Track) -> None:
        from backend.client import BackendError, BackendTimeout

        track.last_event = time.monotonic()
        try:
            st = self.client.status(track.job_id)
        except BackendTimeout:
            self._line(track, "the backend does not answer; still waiting")
            self.client.reconnect()  # never read a late reply on the old socket as the next one's
            return
        except BackendError as exc:
            del self.inflight[track.job_id]
            self._failed(track, f"lost on the backend: {exc}")
            return
        if st["state"] == "done":
            del self.inflight[track.job_id]
            self._done(track)
        elif st["state"] in ("failed", "cancelled"):
            del self.inflight[track.job_id]
            self._failed(track, st.get("error") or st["state"])
        elif st["last_seq"] > self.client.last_seq.get(track.job_id, 0):
            self.client.resume(track.job_id)  # events exist that never arrived: subscribe again

    def _on_event(self, msg) -> None:
        track = self.inflight.get(msg.job_id)
        if track is None:
            return
        track.last_event = time.monotonic()
        c = msg.content
        kind = c.get("kind")
        if kind == "progress":
            stage = c.get("stage", "?")
            now = time.monotonic()
            if stage != track.stage or now - track.printed > 5.0 or c.get("step") == c.get("total"):
                track.stage = stage
                eta = f", eta {c['eta_s']:.0f}s" if c.get("eta_s") is not None else ""
                self._line(track, f"{stage} {c.get('step')}/{c.get('total')}{eta}")
        elif kind == "stage_done":
            self._line(track, f"{c.get('stage')} done")
        elif kind == "done":
            del self.inflight[msg.job_id]
            self._done(track)
        elif kind in ("failed", "cancelled"):
            del self.inflight[msg.job_id]
            reason = f"{c.get('ename')}: {c.get('evalue')}" if kind == "failed" else f"cancelled: {c.get('reason')}"
            self._failed(track, reason)

    def _line(self, track: Track, text: str) -> None:
        track.printed = time.monotonic()
        self.say(f"  [{track.photo.name}] {text}")

    def _done(self, track: Track) -> None:
        from backend.client import BackendError, BackendTimeout

        entry, job_id = track.entry, track.job_id
        glb = self.results_dir / f"{job_id}.glb"
        try:
            self.client.fetch(job_id, glb)
        except (BackendError, BackendTimeout) as exc:
            if isinstance(exc, BackendTimeout):
                self.client.reconnect()  # chunks still in flight must not meet the next request
            self._failed(track, f"download failed: {exc}")
            return
        from backend.protocol import file_digest

        entry.update(state="fetched", glb=str(glb.relative_to(self.out)), result_sha256=file_digest(glb)[0])
        self.manifest.log(entry, f"fetched {job_id}")
        self.manifest.save()
        self._convert(track.photo, entry, job_id)

    def _convert(self, photo: Photo, entry: dict[str, Any], job_id: str) -> None:
        from .assets import AssetBuildError, AssetSpec, blender_output_to, build_asset

        cfg = self.cfg
        blend = self.out / f"{photo.name}.blend"
        opts = cfg.options()
        extra = ", ".join(f"{k} {v}" for k, v in sorted(opts.items()) if k not in ("preset", "seed"))
        description = (
            f"Generated by MPOD123 from the photo {photo.source} (sha256 {photo.sha256[:16]}) "
            f"with preset {cfg.preset}, seed {cfg.seed}{', ' + extra if extra else ''}; job {job_id}."
        )
        spec = AssetSpec(
            glb=self.out / entry["glb"], out=blend, name=photo.name, catalog_id=self.catalog_id,
            tags=tags_for(photo.path.stem) + ["mpod123"], description=description,
            preview_size=cfg.preview_size, preview_engine=cfg.preview_engine,
            preview_png=self.previews_dir / f"{photo.name}.png",
        )
        try:
            with blender_output_to(self.state_dir / "blender.log"):
                timings = build_asset(spec)
        except AssetBuildError as exc:
            entry.update(state="failed", error=f"conversion failed: {exc}")
            self.manifest.log(entry, f"conversion failed: {exc}")
            self.manifest.save()
            self._outcome(photo.source, photo.name, "failed", f"conversion failed: {exc}")
            self.say(f"  [{photo.name}] FAILED: conversion: {exc}")
            return
        self.timings.append({"name": photo.name, **timings})
        entry.update(state="done", blend=blend.name, error=None)
        self.manifest.log(entry, f"wrote {blend.name}")
        self.manifest.save()
        detail = f"{blend.name} ({int(timings['faces'])} faces, {timings['total_s']:.1f}s in Blender)"
        if photo.note:
            detail += f"; {photo.note}"
        self._outcome(photo.source, photo.name, "done", detail)
        finished = sum(o.status != "skipped" for o in self.outcomes)
        self.say(f"  [{photo.name}] done -> {blend.name} ({finished}/{self.total})")

    def _failed(self, track: Track, reason: str, retry: bool = True) -> None:
        entry = track.entry
        self.manifest.log(entry, f"{track.job_id} failed: {reason}")
        if retry and track.tries <= self.cfg.retries:
            self._line(track, f"failed ({reason}); retrying")
            entry.update(state="pending", error=reason)
            self.manifest.save()
            self.queue.append((track.photo, entry, track.tries, False))
            return
        self._give_up(track.photo, entry, reason)

    def _give_up(self, photo: Photo, entry: dict[str, Any], reason: str) -> None:
        entry.update(state="failed", error=reason)
        self.manifest.save()
        self._outcome(photo.source, photo.name, "failed", reason)
        self.say(f"  [{photo.name}] FAILED: {reason}")

    # --------------------------------------------------------------- library
    def _library(self, photos: list[Photo]) -> None:
        from .assets import blender_output_to, build_library

        items = []
        for photo in photos:
            entry = self.manifest.entry(photo.sha256)
            blend = self.out / f"{photo.name}.blend"
            if entry and entry["state"] == "done" and blend.is_file():
                items.append((blend, photo.name))
        if not items:
            return
        path = self.out / f"{LIBRARY_NAME}.blend"
        with blender_output_to(self.state_dir / "blender.log"):
            n = build_library(items, path)
        self.manifest.data["library"] = {"path": path.name, "assets": n}
        self.say(f"library {path.name}: links {n} asset(s)")


def summary_table(outcomes: list[Outcome]) -> str:
    """The end-of-batch table: one row per file, done first, then failed, then skipped."""
    order = {"done": 0, "failed": 1, "skipped": 2}
    rows = sorted(outcomes, key=lambda o: (order.get(o.status, 3), o.source))
    head = ("status", "photo", "asset", "detail")
    cells = [head] + [(o.status, o.source, o.name or "-", o.detail) for o in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "failed", "skipped")}
    lines.append(f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped")
    return "\n".join(lines)
