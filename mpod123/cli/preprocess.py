"""``mpod123 preprocess PHOTO -o DIR``: the cut-out a run would start from, in a second.

Writes ``input.png`` (the framed RGBA reference), ``mask.png`` (its alpha) and
``matte.png`` (the alpha at the photo's own size), prints the matting method
and its confidence, and exits 2 with the fix-it message when the matting
refuses (an ``InputImageError``, mapped to 2 by ``mpod123.cli.common.run_command``),
so a script or the add-on can check a cut-out before committing a GPU for an hour.
"""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import PreprocessConfig
    from ..pipeline.preprocess import preprocess

    cfg = PreprocessConfig(size=args.size, matting=args.matting)
    if args.min_confidence is not None:
        cfg.min_confidence = args.min_confidence
    pre = preprocess(args.photo, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pre.save(out)
    pre.save_matte(out / "matte.png")
    summary = {
        "method": pre.method,
        "confidence": round(pre.confidence, 3),
        "source_size": list(pre.source_size),
        "bbox": list(pre.bbox),
        "details": {k: round(v, 4) for k, v in pre.details.items()},
    }
    (out / "preprocess.json").write_text(json.dumps(summary, indent=1))
    print(f"{pre.method} (confidence {pre.confidence:.2f}): wrote input.png, mask.png and matte.png to {out}")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="cut out and frame a photo as a run would, and say how sure the cut is")
    p.add_argument("photo", help="PNG, JPEG or WebP")
    p.add_argument("-o", "--out", required=True, help="folder for input.png, mask.png, matte.png, preprocess.json")
    p.add_argument("--matting", default="auto", choices=["auto", "alpha", "plain", "model"],
                   help="auto (default): alpha channel, else the segmentation model if installed, else a confident "
                        "plain-background matte; the others force one")
    p.add_argument("--size", type=int, default=1024, help="side of the framed input.png (default 1024)")
    p.add_argument("--min-confidence", type=float, help="refuse plain-background mattes below this (default 0.5)")
    p.set_defaults(func=_cmd_preprocess)
