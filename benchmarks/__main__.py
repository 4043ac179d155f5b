"""``python -m benchmarks convert|read|scale|s3``: run a benchmark, print its table, save its figures."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

#: Per benchmark, (samples, repeats) unless given; ``read`` took ~3 minutes on 2 cores before its rows
#: with augmentation (each epoch of those deforms 64 samples at tens of ms each) added a few more.
#: For ``scale``, samples is the size of its large set (it also measures 2 and 64 samples).
DEFAULTS = {"convert": (128, 3), "read": (64, 5), "scale": (640, 3), "s3": (64, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("which", choices=tuple(DEFAULTS))
    parser.add_argument(
        "--samples",
        type=int,
        help="synthetic samples, at least 64 (default: convert 128, read 64); for scale, the "
        "large set, more than 64 (default 640; e.g. 160 for a quick check)",
    )
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default: convert 3, read 5, scale 3)")
    parser.add_argument(
        "--scratch",
        type=Path,
        help="working directory (default: a new temporary one; for scale data/bench-scale, kept for the next run)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="where to save the figures (default bench/<which>.json)"
    )
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if args.which == "convert":
        from benchmarks.conversion import run
    elif args.which == "read":
        from benchmarks.reading import run
    elif args.which == "s3":
        from benchmarks.object_storage import run
    else:
        from benchmarks.scale import run

    samples, repeats = DEFAULTS[args.which]
    result = run(samples=args.samples or samples, repeats=args.repeats or repeats, scratch=args.scratch)
    path = args.json or Path("bench") / f"{args.which}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"figures saved to {path}")


if __name__ == "__main__":
    main()
