"""The exported ONNX detector against the PyTorch one on the test split: AP of each (the same
scoring as `frcnn evaluate`) and inference time per image, the two interleaved image by image
(batch 1, as `frcnn predict` runs), paired ratio ONNX / PyTorch with a bootstrap 95 % interval.

    python benchmarks/onnx_parity.py --checkpoint models/model.pt --test data/processed/test.json
    -> reports/onnx_export.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import bootstrap_median_ci  # noqa: E402
from frcnn.data.dataset import DetectionDataset  # noqa: E402
from frcnn.deploy.export import export_onnx  # noqa: E402
from frcnn.deploy.onnx_predict import OnnxDetector  # noqa: E402
from frcnn.engine.inference import load_detector, to_coco_results  # noqa: E402
from frcnn.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from frcnn.pipeline.evaluate import score  # noqa: E402


def run(checkpoint: Path, test_json: Path, out: Path) -> dict:
    model, names = load_detector(checkpoint)
    dataset = DetectionDataset(test_json, train=False, include_difficult=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        onnx_path = export_onnx(model, names, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        size_mb = onnx_path.stat().st_size / 2**20
        onnx = OnnxDetector(onnx_path, threads=torch.get_num_threads())
        results = {"pytorch": [], "onnx": []}
        times = {"pytorch": [], "onnx": []}
        for i in range(len(dataset)):
            image, target = dataset[i]
            runs = {"pytorch": lambda: _torch(model, image), "onnx": lambda: onnx(image.numpy()[None])[0]}
            for name in (("pytorch", "onnx") if i % 2 == 0 else ("onnx", "pytorch")):
                t = time.perf_counter()
                det = runs[name]()
                times[name].append(time.perf_counter() - t)
                det = {k: torch.as_tensor(v) for k, v in det.items()}
                results[name].extend(to_coco_results(target["image_id"], det))
    gt = json.loads(test_json.read_text())
    metrics = {name: score(gt, res)[0] for name, res in results.items()}
    ratios = [o / p for o, p in zip(times["onnx"][1:], times["pytorch"][1:])]  # first: warm-up
    lo, hi = bootstrap_median_ci(ratios)
    report = {
        "checkpoint": str(checkpoint), "images": len(dataset), "export_seconds": round(export_s, 1),
        "onnx_mb": round(size_mb, 1), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "metrics": {n: {k: m[k] for k in ("map", "ap50", "ap75", "voc07_ap50", "num_detections")}
                    for n, m in metrics.items()},
        "delta": {k: metrics["onnx"][k] - metrics["pytorch"][k] for k in ("map", "ap50", "ap75",
                                                                           "voc07_ap50")},
        "seconds_per_image": {n: statistics.median(t[1:]) for n, t in times.items()},
        "ratio_onnx_over_pytorch": {"median": statistics.median(ratios), "ci95": [lo, hi],
                                    "pairs": len(ratios)},
    }
    atomic_write_json(out / "onnx_export.json", report, sort_keys=True)
    m, d, r = report["metrics"], report["delta"], report["ratio_onnx_over_pytorch"]
    lines = ["# The exported ONNX model against PyTorch (test split)", "",
             f"{report['images']} test images, batch 1, {report['threads']} threads, torch "
             f"{report['torch']}; export took {report['export_seconds']} s, "
             f"{report['onnx_mb']} MB.", "",
             "| | mAP | AP50 | AP75 | VOC07 AP50 | detections | s / image (median) |",
             "|---|---|---|---|---|---|---|"]
    for n in ("pytorch", "onnx"):
        lines.append(f"| {n} | {m[n]['map']:.4f} | {m[n]['ap50']:.4f} | {m[n]['ap75']:.4f} | "
                     f"{m[n]['voc07_ap50']:.4f} | {m[n]['num_detections']} | "
                     f"{report['seconds_per_image'][n]:.4f} |")
    lines += ["", f"Δ (ONNX − PyTorch): mAP {d['map']:+.5f}, AP50 {d['ap50']:+.5f}, "
              f"AP75 {d['ap75']:+.5f}, VOC07 AP50 {d['voc07_ap50']:+.5f}.",
              f"Time ratio ONNX / PyTorch, paired per image: {r['median']:.3f} "
              f"(95 % CI {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f}, {r['pairs']} pairs)."]
    atomic_write_text(out / "onnx_export.md", "\n".join(lines) + "\n")
    return report


@torch.inference_mode()
def _torch(model, image):
    return model([image])[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/model.pt"))
    p.add_argument("--test", type=Path, default=Path("data/processed/test.json"))
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args()
    print(json.dumps(run(args.checkpoint, args.test, args.out), indent=2))


if __name__ == "__main__":
    main()
