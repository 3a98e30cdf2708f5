"""Loading throughput: images/s of DetectionDataset through a DataLoader with 0, 1 and 2 workers.

    python benchmarks/bench_dataloader.py [--json data/augmented/trainval.json] [--images 512]

Without an existing JSON (no `dvc repro` yet) it generates a small synth set in a temp folder
with the same stages. One line per setting; the first epoch's worker start-up is included,
as it is in training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from frcnn.config import config_from_dict
from frcnn.data.dataset import DetectionDataset, collate_fn


def synth_json(folder: Path, num_images: int) -> Path:
    """A synth trainval set of `num_images` 256 px images, through download + preprocess."""
    from frcnn.data.download import run_download
    from frcnn.data.preprocess import run_preprocess

    cfg = config_from_dict({}, {"data.synth.num_trainval": num_images, "data.synth.num_test": 1})
    run_download(cfg, folder / "raw", folder / "cache", progress=False)
    run_preprocess(cfg, folder / "raw", folder / "processed", folder / "reports", progress=False)
    return folder / "processed" / "trainval.json"


def measure(dataset: DetectionDataset, workers: int, batch_size: int, images: int) -> float:
    """Images per second over the first `images` images (whole batches)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_fn, persistent_workers=False)
    start, seen = time.perf_counter(), 0
    for batch_images, _ in loader:
        seen += len(batch_images)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("data/augmented/trainval.json"))
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.json
        if not path.is_file():
            print(f"{path} not found: generating {args.images} synth images in a temp folder")
            path = synth_json(Path(tmp), args.images)
        dataset = DetectionDataset(path, train=True, hflip=True)
        n = min(args.images, len(dataset))
        print(f"{path}: {len(dataset)} images, measuring {n}, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}")
        for workers in args.workers:
            rate = measure(dataset, workers, args.batch_size, n)
            print(f"workers={workers}: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
