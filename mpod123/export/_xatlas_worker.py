"""Child process for xatlas: ``python -m mpod123.export._xatlas_worker IN.npz OUT.npz``.

Kept apart so that a crash inside xatlas kills only this process.
"""

from __future__ import annotations

import sys

import numpy as np


def main(src: str, dst: str) -> None:
    import xatlas

    with np.load(src) as data:
        vertices, faces = data["vertices"], data["faces"]
    vmapping, indices, uvs = xatlas.parametrize(vertices, faces)
    np.savez(dst, vmapping=vmapping, indices=indices, uvs=uvs)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
