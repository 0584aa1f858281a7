"""The pipeline's weights as a visible step: what is needed, what is here, and getting the rest with progress.

The pipeline needs two diffusers-layout models (Zero123 for stage 1, Stable
Diffusion for stage 2), each a hub id or a local folder. A hub id is "ready"
when its snapshot in the Hugging Face cache holds every component the
pipeline loads. Getting one:

* from the hub, file by file with ``hf_hub_download`` (resumable: the hub
  library continues ``.incomplete`` files), while a watcher thread measures
  the bytes on disk, so progress is real bytes even though the library
  reports none;
* from a local mirror folder (a studio's network share laid out like the hub
  repository): copied into the cache layout in chunks, resuming a partial file.

With no weights and no network a job fails at once with the fix-it message
(:func:`ensure`), never after the watchdog. Standard library plus
huggingface_hub (imported only when downloading); never torch.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .errors import Mpod123Error

GB = 1e9
MIRROR_ENV = "MPOD123_MODELS_MIRROR"
"""A folder with ``<org>/<name>/`` copies of hub repositories, used before the hub."""
def local_revision(repo_id: str) -> str:
    """The snapshot name of a copied model: 40 hex digits, as the hub library expects of a commit."""
    import hashlib

    return hashlib.sha1(f"mpod123 local copy of {repo_id}".encode()).hexdigest()


WEIGHTLESS = ("scheduler", "tokenizer")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")
"""In order of preference: what ``from_pretrained`` loads by default (fp32 safetensors, else .bin)."""


class ModelNotFound(Mpod123Error, FileNotFoundError):
    """Weights that are not on this machine and cannot be fetched now; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    role: str
    """zero123 or sd: the job's model and the serve flag that points at it"""
    source: str
    """hub id or local folder"""
    components: tuple[str, ...]
    approx_bytes: int
    """What a download of the default repository takes (an estimate, for "will download N GB")"""
    what: str = ""

    @property
    def name(self) -> str:
        return self.source.rstrip("/\\").split("/")[-1]

    @property
    def is_folder(self) -> bool:
        return (Path(self.source).expanduser().is_dir() or self.source.startswith((".", "/", "~")) or "\\" in self.source
                or re.match(r"^[A-Za-z]:[\\/]", self.source) is not None)


ZERO123_COMPONENTS = ("vae", "image_encoder", "unet", "clip_camera_projection", "scheduler")
SD_COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
APPROX_BYTES = {"zero123": int(5.0 * GB), "sd": int(4.3 * GB)}
"""fp32 safetensors of Zero123-XL (UNet 3.4 GB, CLIP image encoder 1.2 GB, VAE 0.3 GB) and SD 1.5 (UNet 3.4 GB,
text encoder 0.5 GB, VAE 0.3 GB)."""
SWITCHES = {"zero123": "--zero123 (serve, generate)", "sd": "--sd (serve, generate)"}


def pipeline_models(zero123: str | None = None, sd: str | None = None) -> list[ModelSpec]:
    """The two models a real job loads: the given sources, else the config's defaults."""
    from ..config import StableDiffusionConfig, Zero123Config

    return [
        ModelSpec("zero123", zero123 or Zero123Config().model, ZERO123_COMPONENTS, APPROX_BYTES["zero123"], "Zero123"),
        ModelSpec("sd", sd or StableDiffusionConfig().model, SD_COMPONENTS, APPROX_BYTES["sd"], "Stable Diffusion"),
    ]


# ------------------------------------------------------------------ where things are
def hub_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    path = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    return Path(path).expanduser()


def repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    return (cache or hub_cache()) / f"models--{repo_id.replace('/', '--')}"


def snapshot(spec: ModelSpec, cache: Path | None = None) -> Path | None:
    """The folder ``from_pretrained`` would read: the source folder, or the cached snapshot of ``refs/main``."""
    if spec.is_folder:
        path = Path(spec.source).expanduser()
        return path if path.is_dir() else None
    repo = repo_folder(spec.source, cache)
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = repo / "snapshots" / revision
    return path if path.is_dir() else None


def missing_components(folder: Path | None, components: tuple[str, ...]) -> list[str]:
    if folder is None:
        return list(components)
    missing = []
    for comp in components:
        d = folder / comp
        has_config = d.is_dir() and any(d.glob("*.json"))
        has_weights = comp in WEIGHTLESS or any((d / w).is_file() for w in WEIGHT_FILES)
        if not (has_config and has_weights):
            missing.append(comp)
    return missing


def folder_bytes(folder: Path | None) -> int:
    if folder is None or not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class WeightsStatus:
    role: str
    source: str
    ready: bool
    path: str | None
    bytes_on_disk: int
    download_bytes: int
    """0 when ready, else the estimate of what a download takes"""
    missing: list[str] = field(default_factory=list)


def status(spec: ModelSpec, cache: Path | None = None) -> WeightsStatus:
    folder = snapshot(spec, cache)
    missing = missing_components(folder, spec.components)
    ready = not missing
    return WeightsStatus(spec.role, spec.source, ready, str(folder) if folder else None, folder_bytes(folder),
                         0 if ready or spec.is_folder else spec.approx_bytes, missing)


def summary(specs: list[ModelSpec], cache: Path | None = None) -> str:
    """``models: ready`` or ``models: will download 9.3 GB`` (or what is missing in a local folder)."""
    states = [status(s, cache) for s in specs]
    local_missing = [s for s in states if not s.ready and Path(s.source).expanduser().is_dir()]
    if local_missing:
        return "models: incomplete folder " + ", ".join(f"{s.source} (no {', '.join(s.missing)})" for s in local_missing)
    todo = sum(s.download_bytes for s in states)
    return "models: ready" if todo == 0 else f"models: will download {todo / GB:.1f} GB"


# ------------------------------------------------------------------ network
def offline_reason(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached now (HF_HUB_OFFLINE, or no connection), or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        try:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        except ImportError:
            return "huggingface_hub is not installed"
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot reach {host}:{port} ({exc.strerror or exc})"


# ------------------------------------------------------------------ getting weights
@dataclass
class DownloadProgress:
    role: str
    name: str
    done_bytes: int
    total_bytes: int
    file: str = ""

    def text(self) -> str:
        return f"downloading {self.name}: {self.done_bytes / GB:.1f} / {self.total_bytes / GB:.1f} GB"


ProgressFn = Callable[[DownloadProgress], None]


def choose_files(listing: dict[str, int], components: tuple[str, ...]) -> dict[str, int]:
    """Of a repository's files (name -> size), the ones ``from_pretrained`` reads for these components."""
    chosen = {n: s for n, s in listing.items() if n == "model_index.json"}
    for comp in components:
        for name, size in listing.items():
            head, _, base = name.rpartition("/")
            if head == comp and base.endswith((".json", ".txt")):
                chosen[name] = size
        for weights in WEIGHT_FILES if comp not in WEIGHTLESS else ():
            if f"{comp}/{weights}" in listing:
                chosen[f"{comp}/{weights}"] = listing[f"{comp}/{weights}"]
                break
    return chosen


def mirror_folder(spec: ModelSpec, mirror: str | Path | None = None) -> Path | None:
    """The spec's repository inside the mirror folder (``MPOD123_MODELS_MIRROR``), if there."""
    base = mirror or os.environ.get(MIRROR_ENV)
    if not base or spec.is_folder:
        return None
    path = Path(base).expanduser() / spec.source
    return path if path.is_dir() else None


def copy_from_folder(spec: ModelSpec, src: Path, on_progress: ProgressFn | None = None, cache: Path | None = None,
                     chunk: int = 8 << 20) -> Path:
    """Copy a repository folder into the hub cache's layout (``refs/main`` -> ``snapshots/<local revision>``).

    Resumable: finished files (same size) are skipped and a ``.incomplete``
    file continues from where it stopped. ``refs/main`` is written last, so a
    half-copied model is never found as "ready".
    """
    listing = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()}
    files = choose_files(listing, spec.components)
    if missing_components(src, spec.components):
        raise ModelNotFound(f"{src} does not hold the {spec.what or spec.role} model: it lacks "
                            f"{', '.join(missing_components(src, spec.components))}")
    repo = repo_folder(spec.source, cache)
    dest = repo / "snapshots" / local_revision(spec.source)
    total = sum(files.values())
    done = 0
    for name, size in sorted(files.items()):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.stat().st_size == size:
            done += size
            continue
        part = target.with_name(target.name + ".incomplete")
        offset = part.stat().st_size if part.is_file() and part.stat().st_size <= size else 0
        with open(src / name, "rb") as fin, open(part, "ab" if offset else "wb") as fout:
            fin.seek(offset)
            done += offset
            while block := fin.read(chunk):
                fout.write(block)
                done += len(block)
                if on_progress:
                    on_progress(DownloadProgress(spec.role, spec.name, done, total, name))
        os.replace(part, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(local_revision(spec.source))
    if on_progress:
        on_progress(DownloadProgress(spec.role, spec.name, total, total, ""))
    return dest


def download_from_hub(spec: ModelSpec, on_progress: ProgressFn | None = None, cache: Path | None = None,
                      interval_s: float = 1.0) -> Path:
    """Fetch the files the pipeline reads, one by one, reporting bytes on disk every ``interval_s``."""
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(spec.source, files_metadata=True)
    listing = {s.rfilename: int(s.size or 0) for s in info.siblings or ()}
    files = choose_files(listing, spec.components)
    total = sum(files.values())
    repo = repo_folder(spec.source, cache)
    done = [0]
    stop = threading.Event()

    def partial_bytes() -> int:
        return sum(p.stat().st_size for p in (repo / "blobs").glob("*.incomplete")) if (repo / "blobs").is_dir() else 0

    def watch() -> None:
        while not stop.wait(interval_s):
            if on_progress:
                on_progress(DownloadProgress(spec.role, spec.name, min(total, done[0] + partial_bytes()), total))

    watcher = threading.Thread(target=watch, name="weights-progress", daemon=True)
    watcher.start()
    try:
        for name, size in sorted(files.items()):
            hf_hub_download(spec.source, name, cache_dir=str(cache) if cache else None)
            done[0] += size
            if on_progress:
                on_progress(DownloadProgress(spec.role, spec.name, done[0], total, name))
    finally:
        stop.set()
        watcher.join(timeout=5)
    folder = snapshot(spec, cache)
    if folder is None or missing_components(folder, spec.components):
        raise ModelNotFound(f"the download of {spec.source} finished but {folder} lacks "
                            f"{', '.join(missing_components(folder, spec.components))}")
    return folder


def missing_offline(source: str, subfolder: str | None = None, cache: Path | None = None) -> str | None:
    """Why a hub model's component cannot be loaded now (not cached and no network), or None if it may be."""
    spec = ModelSpec("", source, (subfolder,) if subfolder else (), 0)
    if spec.is_folder:
        return None
    folder = snapshot(spec, cache)
    if folder is not None and (not subfolder or (folder / subfolder).is_dir()):
        return None
    why = offline_reason()
    return None if why is None else f"it is not in the cache ({repo_folder(source, cache)}) and {why}"


def fix_it(spec: ModelSpec, why: str, cache: Path | None = None) -> str:
    return (
        f"the {spec.what or spec.role} weights ({spec.source}) are not on this machine (looked in "
        f"{repo_folder(spec.source, cache) if not spec.is_folder else spec.source}) and cannot be downloaded now: {why}. "
        f"Run `mpod123 models download {spec.source}` where there is internet (or with --from a copy of the model "
        f"folder), or point {SWITCHES.get(spec.role, 'the model option')} at a local folder in the diffusers layout."
    )


def ensure(spec: ModelSpec, on_progress: ProgressFn | None = None, cache: Path | None = None,
           mirror: str | Path | None = None, offline: Callable[[], str | None] = offline_reason) -> Path:
    """The model's folder, downloading it first (with progress) when it is missing.

    Missing with no way to get it (no mirror copy, no network): raises
    :class:`ModelNotFound` at once, with what to do.
    """
    st = status(spec, cache)
    if st.ready:
        return Path(st.path)
    if spec.is_folder:
        raise ModelNotFound(f"{spec.source} is not a complete {spec.what or spec.role} model folder (diffusers layout): "
                            f"it lacks {', '.join(st.missing)}")
    src = mirror_folder(spec, mirror)
    if src is not None:
        return copy_from_folder(spec, src, on_progress, cache)
    why = offline()
    if why:
        raise ModelNotFound(fix_it(spec, why, cache))
    return download_from_hub(spec, on_progress, cache)


def throttled(fn: ProgressFn, every_s: float = 1.0) -> ProgressFn:
    """Pass on at most one progress report per ``every_s`` (and always the last one of a model)."""
    last = [0.0]

    def call(p: DownloadProgress) -> None:
        now = time.monotonic()
        if p.done_bytes >= p.total_bytes or now - last[0] >= every_s:
            last[0] = now
            fn(p)

    return call


def remove(spec: ModelSpec, cache: Path | None = None) -> bool:
    """Delete a cached model (not a local folder source)."""
    repo = repo_folder(spec.source, cache)
    if spec.is_folder or not repo.is_dir():
        return False
    shutil.rmtree(repo)
    return True
