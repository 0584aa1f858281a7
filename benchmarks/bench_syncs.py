"""Host syncs per training step: one stage-1 step, one textual-inversion step, one stage-2 step.

Tiny random models (built in code, no weights) through the production loaders; the GPU's
branches taken on the CPU (``mpod123.runtime.syncs.gpu_paths``), counted by
``SyncCounter`` (device-to-host reads and data-dependent shapes). Prints each scenario's
count per step, the budget, and where the syncs happen; exits 1 when a step is over its
budget. Syncs inside the torch rasterizer (nvdiffrast's CPU twin, not on a GPU's path)
are listed apart as ``twin_per_step``.
"""

from __future__ import annotations

import sys

from common import parser, quiet, report
from mpod123.bench.sync_steps import BUDGETS, measure


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=4, help="steps counted per scenario (after warm-up)")
    args = p.parse_args()
    quiet()
    rows = [r.as_dict() for r in measure(args.steps)]
    report("syncs", {"benchmark": "syncs", "budgets": BUDGETS, "results": rows}, args.out)
    over = [r["name"] for r in rows if r["max"] > r["budget"]]
    if over:
        print(f"over budget: {', '.join(over)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
