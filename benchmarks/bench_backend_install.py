"""The bundled backend's costs: each platform's extension zip, and the time from a click on Install Backend to a
usable managed environment.

    python benchmarks/bench_backend_install.py [--platforms linux-x64,...] [--torch torch==2.13.0] [--out FILE]

Builds the zips with build_addon.py (downloading the pyzmq wheels it lacks),
then runs the add-on's installer (blender_addon.core.backend_env, the code behind
Install Backend, without Blender) into a fresh folder with this Python, the
torch requirement given (default: the one constraints.txt pins) and pip's own
configuration, and reports the seconds to "usable", the step timeline and the
environment's size on disk. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import build_addon  # noqa: E402
from blender_addon import backend_env as be  # noqa: E402


def _pinned_torch() -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip().startswith("torch=="):
            return line.strip()
    return "torch"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--platforms", default=",".join(build_addon.PLATFORMS))
    ap.add_argument("--torch", default=_pinned_torch())
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backend_install.json"))
    args = ap.parse_args()
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
                    "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        zips = build_addon.build(tmp / "zips", [p for p in args.platforms.split(",") if p])
        result["build_s"] = round(time.monotonic() - t0, 1)
        result["zips"] = {z.name: z.stat().st_size for z in zips}
        import zipfile

        with zipfile.ZipFile(zips[0]) as z:
            wheel = next(n for n in z.namelist() if n.startswith(be.WHEEL_DIR + "/"))
            result["backend_wheel"] = {wheel: z.getinfo(wheel).file_size}
            (tmp / "addon").mkdir()
            z.extract(wheel, tmp / "addon")
        if not args.skip_install:
            plan = be.InstallPlan(root=str(tmp / "backend"), python=sys.executable,
                                  wheel=str(be.bundled_wheel(tmp / "addon")), torch_requirement=args.torch,
                                  build=asdict(be.detect_torch_build()))
            timeline = []
            t0 = time.monotonic()

            def note(st, last=[None]):  # noqa: B006  one list per run
                if st.step.split(":")[0] != last[0]:
                    last[0] = st.step.split(":")[0]
                    timeline.append((round(time.monotonic() - t0, 1), st.step[:80]))

            final = be.Installer(plan).start().wait(timeout_s=1800, on_status=note)
            result["install"] = {"state": final.state, "click_to_usable_s": round(time.monotonic() - t0, 1),
                                 "torch_requirement": args.torch, "timeline": timeline,
                                 "env_bytes": _size(tmp / "backend" / be.ENV_DIR),
                                 "build": plan.build}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
