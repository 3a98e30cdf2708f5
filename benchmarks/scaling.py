"""How the cost grows: ours against torchvision (same trunk, anchors, sizes, weights copied; the
like-for-like setup of `benchmarks.peer`) as the image, the GT count and the proposal count grow.

- image short side 256 / 512 / 800 (long side x 4/3), for the default trunk (resnet18_c4) and for
  resnet50 (C5): a training step (batch 2), inference at batch 1, and the peak extra RSS of each
  (a child process per implementation and point, so one's allocator never serves the other);
- GT boxes per image 1 / 8 / 32 (training step; default trunk, 512 px);
- proposals kept for the second stage at test 100 / 300 / 1000 (inference; default trunk, 512 px).

Times are the median of interleaved rounds (ours and torchvision alternated, order shuffled per
round), with the paired ratio's bootstrap 95 % interval. Writes reports/scaling.{json,md,png}.

    python benchmarks/scaling.py [--rounds 3] [--out reports]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.memory import _reset_peak, _rss_kib  # noqa: E402
from benchmarks.peer import COMMON_OVERRIDES, build_torchvision_peer, calibrate_batchnorm  # noqa: E402
from benchmarks.timing import bootstrap_median_ci, interleaved, make_infer, make_train_step  # noqa: E402
from frcnn.config import Config, config_from_dict, load_config  # noqa: E402
from frcnn.model.backbone import backbone_channels  # noqa: E402
from frcnn.model.build import build_model  # noqa: E402

TRUNKS = {"resnet18_c4": {"model.backbone": "resnet18_c4"},
          "resnet50": {"model.backbone": "resnet50", "model.frozen_bn": True,
                       "model.freeze_stem": True, "anchors.scales": [128, 256, 512]}}
SIDES = (256, 512, 800)
GT_COUNTS = (1, 8, 32)
PROPOSALS = (100, 300, 1000)
NUM_CLASSES = 6


def point_config(base: Config, trunk: str, side: int, proposals: int | None = None) -> Config:
    over = {**COMMON_OVERRIDES, "anchors.unit": "px", **TRUNKS[trunk], "model.min_size": side,
            "model.max_size": side * 4 // 3 + 1}
    over["rpn.hidden_channels"] = backbone_channels(over["model.backbone"])
    if proposals is not None:
        over["rpn.post_nms_top_n_test"] = proposals
    return config_from_dict(base.to_dict(), over)


def inputs(side: int, batch: int, gt: int, seed: int = 0) -> tuple[list, list]:
    h, w = side, side * 4 // 3
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, h, w, generator=g))
        wh = torch.rand(gt, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + torch.tensor([w, h]) * 0.05
        xy = torch.rand(gt, 2, generator=g) * (torch.tensor([w, h]) - wh)
        targets.append({"boxes": torch.cat((xy, xy + wh), 1),
                        "labels": torch.randint(1, NUM_CLASSES + 1, (gt,), generator=g)})
    return images, targets


def pair(cfg: Config, side: int) -> tuple[Any, Any]:
    torch.manual_seed(0)
    ours = build_model(cfg, num_classes=NUM_CLASSES)
    calibrate_batchnorm(ours, inputs(side, 2, 1, seed=100)[0])
    return ours, build_torchvision_peer(cfg, ours)


def timed(fns: dict[str, Any], rounds: int) -> dict[str, Any]:
    t = interleaved(fns, warmup=1, min_rounds=rounds, max_rounds=rounds, budget_s=0)
    paired = [o / v for o, v in zip(t["ours"], t["tv"])]
    return {"ours_s": statistics.median(t["ours"]), "tv_s": statistics.median(t["tv"]),
            "ratio": statistics.median(paired), "ci95": list(bootstrap_median_ci(paired)),
            "rounds": len(paired)}


def memory_child(arg: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: peak extra RSS (MiB) of inference at batch 1 and of two train steps."""
    cfg = config_from_dict(arg["config"])
    ours, tv = pair(cfg, arg["side"])
    model = ours if arg["impl"] == "ours" else tv
    images, targets = inputs(arg["side"], 2, 4)
    base = _rss_kib("VmRSS")
    _reset_peak()
    make_infer(model, images[:1])()
    out = {"infer_mib": (_rss_kib("VmHWM") - base) / 1024}
    step = make_train_step(model, images, targets)
    _reset_peak()
    step()
    step()
    out["train_mib"] = (_rss_kib("VmHWM") - base) / 1024
    return out


def memory(cfg: Config, side: int, impl: str) -> dict[str, float]:
    arg = json.dumps({"config": cfg.to_dict(), "side": side, "impl": impl})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--memory-child", arg], capture_output=True,
                          text=True, env=env, timeout=1800, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[7:])
    raise RuntimeError(f"memory child {impl} {side}: {done.stderr[-1500:]}")


def run(rounds: int, out: Path, params: Path) -> dict[str, Any]:
    base = load_config(params)
    rows: list[dict[str, Any]] = []
    for trunk in TRUNKS:
        for side in SIDES:
            cfg = point_config(base, trunk, side)
            ours, tv = pair(cfg, side)
            images, targets = inputs(side, 2, 4)
            step = timed({"ours": make_train_step(ours, images, targets),
                          "tv": make_train_step(tv, images, targets)}, rounds)
            infer = timed({"ours": make_infer(ours, images[:1]), "tv": make_infer(tv, images[:1])},
                          rounds)
            mem = {impl: memory(cfg, side, impl) for impl in ("ours", "tv")}
            rows.append({"sweep": "image", "trunk": trunk, "side": side, "train": step,
                         "infer": infer, "memory": mem})
            print(json.dumps(rows[-1]), flush=True)
    cfg = point_config(base, "resnet18_c4", 512)
    ours, tv = pair(cfg, 512)
    for gt in GT_COUNTS:
        images, targets = inputs(512, 2, gt)
        rows.append({"sweep": "gt", "trunk": "resnet18_c4", "side": 512, "gt": gt,
                     "train": timed({"ours": make_train_step(ours, images, targets),
                                     "tv": make_train_step(tv, images, targets)}, rounds)})
        print(json.dumps(rows[-1]), flush=True)
    for n in PROPOSALS:
        cfg = point_config(base, "resnet18_c4", 512, proposals=n)
        ours, tv = pair(cfg, 512)
        images, _ = inputs(512, 1, 1)
        rows.append({"sweep": "proposals", "trunk": "resnet18_c4", "side": 512, "proposals": n,
                     "infer": timed({"ours": make_infer(ours, images), "tv": make_infer(tv, images)},
                                    rounds)})
        print(json.dumps(rows[-1]), flush=True)
    from frcnn.tools.study import cpu_model

    report = {"machine": cpu_model(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rounds": rounds, "rows": rows}
    write(report, out)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    from frcnn.fileio import atomic_savefig, atomic_write_json, atomic_write_text
    from frcnn.plots.draw import plt

    atomic_write_json(out / "scaling.json", report, sort_keys=True)
    fmt = lambda f: f"{f['ours_s']:.3f} / {f['tv_s']:.3f} ({f['ratio']:.2f}, {f['ci95'][0]:.2f}–{f['ci95'][1]:.2f})"  # noqa: E731
    lines = ["# How the cost grows: ours / torchvision", "",
             f"{report['machine']}, torch {report['torch']}, {report['threads']} threads, float32, "
             f"{report['rounds']} interleaved rounds per figure (median; paired ratio ours / "
             "torchvision with its bootstrap 95 % interval). One run.", "",
             "| trunk | image | train step, batch 2: s (ratio) | inference, batch 1: s (ratio) | "
             "peak MiB train ours / tv | peak MiB infer ours / tv |", "|---|---|---|---|---|---|"]
    for r in (r for r in report["rows"] if r["sweep"] == "image"):
        m = r["memory"]
        lines.append(f"| {r['trunk']} | {r['side']}×{r['side'] * 4 // 3} | {fmt(r['train'])} | "
                     f"{fmt(r['infer'])} | {m['ours']['train_mib']:.0f} / {m['tv']['train_mib']:.0f} | "
                     f"{m['ours']['infer_mib']:.0f} / {m['tv']['infer_mib']:.0f} |")
    lines += ["", "| GT boxes per image (resnet18_c4, 512 px) | train step: s (ratio) |", "|---|---|"]
    lines += [f"| {r['gt']} | {fmt(r['train'])} |" for r in report["rows"] if r["sweep"] == "gt"]
    lines += ["", "| proposals at test (resnet18_c4, 512 px) | inference: s (ratio) |", "|---|---|"]
    lines += [f"| {r['proposals']} | {fmt(r['infer'])} |" for r in report["rows"]
              if r["sweep"] == "proposals"]
    atomic_write_text(out / "scaling.md", "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for trunk, style in (("resnet18_c4", "-"), ("resnet50", "--")):
        rows = [r for r in report["rows"] if r["sweep"] == "image" and r["trunk"] == trunk]
        sides = [r["side"] for r in rows]
        for key, ax in (("train", axes[0]), ("infer", axes[1])):
            ax.plot(sides, [r[key]["ours_s"] for r in rows], style, marker="o", color="C0",
                    label=f"ours {trunk}")
            ax.plot(sides, [r[key]["tv_s"] for r in rows], style, marker="s", color="C1",
                    label=f"torchvision {trunk}")
        axes[2].plot(sides, [r["memory"]["ours"]["train_mib"] for r in rows], style, marker="o",
                     color="C0", label=f"ours {trunk}")
        axes[2].plot(sides, [r["memory"]["tv"]["train_mib"] for r in rows], style, marker="s",
                     color="C1", label=f"torchvision {trunk}")
    for ax, title in zip(axes, ("train step (batch 2), s", "inference (batch 1), s",
                                "peak extra RSS of two train steps, MiB")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("image short side (px)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    atomic_savefig(fig, out / "scaling.png", close=True, dpi=110, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        print("MEMORY " + json.dumps(memory_child(json.loads(args.memory_child))))
        return
    run(args.rounds, args.out, args.params)


if __name__ == "__main__":
    main()
