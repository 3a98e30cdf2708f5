"""Loading throughput: images/s of DetectionDataset through a DataLoader with 0, 1 and 2 workers.

    python benchmarks/bench_dataloader.py [--json data/augmented/trainval.json] [--images 512]

Without an existing JSON (no `dvc repro` yet) it generates a small synth set in a temp folder
with the same stages. One line per setting; the first epoch's worker start-up is included,
as it is in training. `loader_records` is the `dataloader` figure of `frcnn bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from frcnn.config import config_from_dict
from frcnn.data.dataset import DetectionDataset, collate_fn


def synth_json(folder: Path, num_images: int) -> Path:
    """A synth trainval set of `num_images` 256 px images, through download + preprocess."""
    from frcnn.pipeline import download
    from frcnn.pipeline import preprocess

    cfg = config_from_dict({}, {"data.synth.num_trainval": num_images, "data.synth.num_test": 1})
    download.run(cfg, raw_dir=folder / "raw", cache_dir=folder / "cache", progress=False)
    preprocess.run(cfg, raw_dir=folder / "raw", out_dir=folder / "processed", summary_json=folder / "reports" / 'data_summary.json', summary_png=folder / "reports" / 'data_summary.png', preview_png=folder / "reports" / 'data_preview.png', progress=False)
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


def loader_records(num_images: int, workers: list[int], batch_size: int) -> list[dict[str, Any]]:
    """The `dataloader` figure: images/s on a generated synth set with each number of workers."""
    out = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        dataset = DetectionDataset(synth_json(Path(tmp), num_images), train=True, hflip=True)
        for w in workers:
            rate = measure(dataset, w, batch_size, min(num_images, len(dataset)))
            out.append({"figure": "dataloader", "size": f"synth 256 workers={w}",
                        "unit": "images/s", "ours": rate, "torchvision": None, "ratio": None,
                        "batch_size": batch_size})
    return out


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
