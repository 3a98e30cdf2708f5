"""Accuracy against the yardstick: torchvision's Faster R-CNN trained like ours, on our data.

    python benchmarks/train_peer.py [--params params.yaml] [--steps N] [--out reports]

Run after `dvc repro` (it reads data/augmented and data/processed). torchvision's `FasterRCNN` is
assembled by `benchmarks.peer.build_torchvision_peer` with our trunk, anchors, proposal counts,
RoI sampler and head widths, starting from the same initial weights; it is trained by the same
loop (`frcnn.engine.trainer.train`: batches, flips, schedule, bfloat16 autocast) for the same
steps and scored like `frcnn evaluate`. What stays torchvision's is its own: its RPN and box
losses (no lambda, border anchors kept), its RoIAlign kernel, its post-processing, and an RPN conv
as wide as the trunk. Writes `<out>/peer_accuracy.json` beside the pipeline's
`<out>/metrics.json`; prints both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

if not __package__:  # run as `python benchmarks/train_peer.py`: the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peer import build_torchvision_peer  # noqa: E402
from frcnn.config import config_from_dict, load_config  # noqa: E402
from frcnn.data.dataset import DetectionDataset, collate_fn  # noqa: E402
from frcnn.engine.device import seed_everything, select_device  # noqa: E402
from frcnn.engine.inference import predict, to_coco_results  # noqa: E402
from frcnn.engine.trainer import train  # noqa: E402
from frcnn.evaluation.coco import coco_metrics  # noqa: E402
from frcnn.evaluation.voc import voc_metrics  # noqa: E402
from frcnn.model.backbone import backbone_channels  # noqa: E402
from frcnn.model.build import build_model  # noqa: E402

TRAIN_JSON = Path("data/augmented/trainval.json")
TEST_JSON = Path("data/processed/test.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=0, help="0: train.max_steps of the params")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    # torchvision's box head pools with its own RoIAlign; its RPN conv keeps the trunk's width
    overrides: dict[str, object] = {"roi.op": "align"}
    if args.steps:
        overrides["train.max_steps"] = args.steps
    cfg = load_config(args.params, overrides)
    channels = backbone_channels(cfg.model.backbone)
    cfg = config_from_dict(cfg.to_dict(), {"rpn.hidden_channels": channels})
    for path in (TRAIN_JSON, TEST_JSON):
        if not path.exists():
            sys.exit(f"{path}: missing; run `dvc repro` first")
    trainval = DetectionDataset(TRAIN_JSON, train=True)
    seed_everything(cfg.seed)
    peer = build_torchvision_peer(cfg, build_model(cfg, num_classes=trainval.num_classes))
    seed_everything(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(peer, trainval, collate_fn, cfg, Path(tmp) / "peer.pt")
    test = DetectionDataset(TEST_JSON, train=False, include_difficult=True)
    loader = torch.utils.data.DataLoader(test, batch_size=cfg.eval.batch_size, collate_fn=collate_fn)
    detections = []
    for _, target, det in predict(peer.eval(), loader, select_device(cfg.train.device)):
        detections.extend(to_coco_results(target["image_id"], det))
    gt = json.loads(TEST_JSON.read_text())
    coco, voc = coco_metrics(gt, detections), voc_metrics(gt, detections)
    peer_metrics = {"map": coco["map"], "ap50": coco["ap50"], "ap75": coco["ap75"],
                    "voc07_ap50": voc["voc07_map"], "steps": result.step,
                    "train_seconds": round(result.seconds, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "peer_accuracy.json"
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(peer_metrics, indent=2) + "\n")
    tmp_out.replace(out)
    ours_path = args.out / "metrics.json"
    ours = json.loads(ours_path.read_text()) if ours_path.exists() else {}
    for key in ("map", "ap50", "ap75", "voc07_ap50"):
        print(f"{key:>10}  torchvision {peer_metrics[key]:.3f}  ours {ours.get(key, float('nan')):.3f}")
    print(f"torchvision trained {result.step} steps in {result.seconds:.0f} s -> {out}")


if __name__ == "__main__":
    main()
