"""Ours vs torchvision's Faster R-CNN: train step, inference, peak memory, evaluation, loader.

    python benchmarks/bench_model.py [--quick] [--out reports] [--params params.yaml]

A thin wrapper over `benchmarks.bench.run_bench` (also `frcnn bench [--quick]`); see that
module and `benchmarks.peer` for how the peer is made equal and how each figure is measured.
Prints one line per figure and writes `<out>/benchmarks.md` and `<out>/benchmarks.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/bench_model.py`: the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import run_bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes on 2 CPU cores")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    run_bench(args.quick, out_dir=args.out, config_path=args.params)


if __name__ == "__main__":
    main()
