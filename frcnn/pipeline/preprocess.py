"""The `preprocess` stage: data/raw/ (VOC layout + manifest) -> COCO JSON per split + a data report.

What is converted and how bad input is reported: `frcnn.data.preprocess`. Writes
`<out>/{trainval,test}.json` (built in a staging folder and swapped in whole), the summary JSON
and its two figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from frcnn.config import Config
from frcnn.data.preprocess import (
    SPLITS,
    Report,
    class_names_for,
    load_manifest,
    parse_splits,
    split_stats,
    summarise,
    to_coco,
)
from frcnn.fileio import atomic_write_json, check_writable, staged_dir, transaction
from frcnn.pipeline.command import ParamsOpt, SetOpt, load, stage_main, user_errors
from frcnn.plots.data import plot_preview, plot_summary


def run(cfg: Config, *, raw_dir: Path, out_dir: Path, summary_json: Path, summary_png: Path,
        preview_png: Path, progress: bool = True) -> dict[str, Any]:
    """Convert `raw_dir` to COCO JSON in `out_dir` and write the data report; returns the summary."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    check_writable(out_dir, summary_json, summary_png, preview_png, need_bytes=2**20)
    manifest = load_manifest(raw_dir)
    report = Report()
    parsed = parse_splits(raw_dir, manifest, report)  # pass 1: the class list may need them all
    class_names = class_names_for(cfg.data, manifest, raw_dir, parsed)
    cocos = {split: to_coco(split, rows, raw_dir, out_dir, class_names, cfg.data.unknown_class,
                            manifest["dataset"], report, progress)
             for split, rows in parsed.items()}
    stats = {split: split_stats(parsed[split], cocos[split], class_names) for split in cocos}
    summary = summarise(manifest["dataset"], class_names, stats, report)
    with transaction():  # the folder and the three reports land together or not at all
        with staged_dir(out_dir) as staging:
            for split in SPLITS:
                atomic_write_json(staging / f"{split}.json", cocos[split], indent=None)
            plot_preview(staging / "trainval.json", Path(preview_png))
        atomic_write_json(summary_json, summary)
        plot_summary(cocos, class_names, Path(summary_png))
    for split, s in stats.items():
        print(f"preprocess: {split}: {s['images']} of {s['images_listed']} listed images, "
              f"{s['objects']} objects ({s['difficult']} difficult)")
    if report.issues:
        print(f"preprocess: {len(report.issues)} issues, listed in {summary_json}")
    return summary


def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            raw: Annotated[Path, typer.Option(help="download's output folder")] = Path("data/raw"),
            out: Annotated[Path, typer.Option(help="output folder")] = Path("data/processed"),
            reports: Annotated[Path, typer.Option(
                help="folder for data_summary.{json,png} and data_preview.png")] = Path("reports"),
            ) -> None:
    """VOC XML -> COCO JSON per split (data/processed/), data summary and plots in reports/."""
    cfg = load(params, set_)
    with user_errors():
        run(cfg, raw_dir=raw, out_dir=out, summary_json=reports / "data_summary.json",
            summary_png=reports / "data_summary.png", preview_png=reports / "data_preview.png")


if __name__ == "__main__":
    stage_main(command)
