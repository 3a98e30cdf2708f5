"""`frcnn <stage>`: one command per pipeline stage (the DVC stages call the same functions).

Every command reads `--params params.yaml`; `--set key=value` (repeatable) overrides one key
for this run only, e.g. `frcnn train --set loss.lambda=10 --set train.max_steps=50`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from frcnn.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Faster R-CNN from first principles: pipeline stages and tools.")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key=value override, repeatable")]


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """["loss.lambda=10", "anchors.scales=[32,64]"] -> {"loss.lambda": 10, ...} (YAML values)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected key=value")
        if _EXPONENT_FLOAT.fullmatch(value.strip()):
            out[key.strip()] = float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
            continue
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"--set {item}: not a YAML value ({reason})") from None
    return out


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _load(params: Path, set_: list[str] | None):
    from frcnn.config import load_config

    try:
        return load_config(params, parse_overrides(set_))
    except ConfigError as exc:
        _fail(exc)


@app.command()
def download(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Get the dataset of `data.dataset` into data/raw/ (VOC: MD5-checked, mirrors, resume)."""
    from frcnn.data.download import run_download
    from frcnn.data.io import DataError

    try:
        run_download(_load(params, set_))
    except DataError as exc:
        _fail(exc)


@app.command()
def preprocess(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """VOC XML -> COCO JSON per split (data/processed/), data summary and plots in reports/."""
    from frcnn.data.io import DataError
    from frcnn.data.preprocess import run_preprocess

    try:
        run_preprocess(_load(params, set_))
    except DataError as exc:
        _fail(exc)


@app.command()
def augment(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Materialise augmented training copies (data/augmented/) and reports/augment_preview.png."""
    from frcnn.data.augment import run_augment
    from frcnn.data.io import DataError

    try:
        run_augment(_load(params, set_))
    except DataError as exc:
        _fail(exc)


@app.command()
def pretrain(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Pretrain the backbone on trainval object crops (models/backbone.pt, reports/pretrain.json)."""
    from frcnn.data.io import DataError
    from frcnn.pipeline import run_pretrain

    try:
        run_pretrain(params, overrides=parse_overrides(set_))
    except (ConfigError, DataError) as exc:
        _fail(exc)


@app.command()
def train(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
          resume: Annotated[bool, typer.Option(help="continue from models/model.pt")] = False) -> None:
    """Train the detector (models/model.pt, reports/train/). Runs under torchrun too."""
    from frcnn.checkpoint import CheckpointError
    from frcnn.engine import NonFiniteLossError
    from frcnn.pipeline import run_train

    from frcnn.model.backbone import WeightsUnavailableError

    try:
        run_train(params, resume=resume, overrides=parse_overrides(set_))
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError,
            WeightsUnavailableError) as exc:
        _fail(exc)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             checkpoint: Annotated[Path, typer.Option(help="checkpoint to evaluate")] = Path("models/model.pt")
             ) -> None:
    """Detect on the test split; mAP (pycocotools) and VOC07/VOC2010 AP into reports/."""
    from frcnn.checkpoint import CheckpointError
    from frcnn.pipeline import run_evaluate

    try:
        run_evaluate(params, checkpoint=checkpoint, overrides=parse_overrides(set_))
    except (ConfigError, CheckpointError, ValueError) as exc:
        _fail(exc)


@app.command()
def predict(paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
            checkpoint: Annotated[Path, typer.Option(help="trained checkpoint")] = Path("models/model.pt"),
            conf: Annotated[float, typer.Option(help="minimum score to keep")] = 0.5,
            out: Annotated[Path, typer.Option(help="output folder")] = Path("predictions")) -> None:
    """Detect objects in images: a JSON of detections and a drawn PNG per image."""
    from frcnn.checkpoint import CheckpointError
    from frcnn.inference import load_detector, predict_files

    try:
        model, names = load_detector(checkpoint)
    except CheckpointError as exc:
        _fail(exc)
    written, errors = predict_files(model, names, paths, out, conf=conf)
    for line in errors:
        typer.echo(f"skipped: {line}", err=True)
    typer.echo(f"{len(written)} image(s) -> {out}/ ({len(errors)} skipped)")
    if not written and errors:
        raise typer.Exit(code=1)


anchors_app = typer.Typer(no_args_is_help=True, help="Look at the anchors before training.")
app.add_typer(anchors_app, name="anchors")

DataOpt = Annotated[Path, typer.Option(help="COCO-format GT json")]


@anchors_app.command("analyze")
def anchors_analyze(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                    data: DataOpt = Path("data/processed/trainval.json"),
                    out: Annotated[Path, typer.Option(help="output folder")] = Path("reports")) -> None:
    """How well the configured anchors cover the GT boxes; k-means suggestions; JSON + plot."""
    import json

    from frcnn.anchor_analysis import analyze_coco
    from frcnn.anchors import anchor_scales_px
    from frcnn.config import load_config
    from frcnn.model.backbone import backbone_stride
    from frcnn.anchor_plots import plot_anchor_coverage
    from frcnn.pipeline import _json_safe
    from frcnn.reports import atomic_write_text

    try:
        cfg = load_config(params, parse_overrides(set_))
        gt = json.loads(Path(data).read_text())
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        _fail(exc)
    stride = backbone_stride(cfg.model.backbone)
    try:
        result = analyze_coco(gt, anchor_scales_px(cfg.anchors.scales, cfg.anchors.unit, stride),
                              cfg.anchors.ratios, stride, cfg.model.min_size, cfg.model.max_size,
                              cfg.rpn.pos_iou_thresh, cfg.rpn.border_tolerance, seed=cfg.seed)
    except (KeyError, ValueError) as exc:  # not COCO GT, or no box to analyse
        _fail(ValueError(f"{data}: {exc}"))
    best = result.pop("best_iou")
    # a size bucket without boxes has NaN statistics: null in the file, which must be strict JSON
    atomic_write_text(out / "anchor_coverage.json",
                      json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    plot_anchor_coverage(best, result, out / "anchor_coverage.png")
    c, s = result["configured"], result["suggested"]
    typer.echo(f"configured scales {c['scales_px']} ratios {c['ratios']}: mean best IoU "
               f"{c['mean_best_iou']:.3f}, {100 * c['fraction_above_pos_thresh']:.1f}% of "
               f"{c['num_gt']} GT boxes reach IoU {result['pos_iou_thresh']}")
    typer.echo(f"suggested  scales {s['scales_px']} ratios {s['ratios']}: mean best IoU "
               f"{s['mean_best_iou']:.3f}, {100 * s['fraction_above_pos_thresh']:.1f}% reach it")
    typer.echo(f"-> {out / 'anchor_coverage.json'}, {out / 'anchor_coverage.png'}")


@anchors_app.command("show")
def anchors_show(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                 data: DataOpt = Path("data/processed/trainval.json"),
                 index: Annotated[int, typer.Option(help="which image of the json")] = 0,
                 out: Annotated[Path, typer.Option(help="PNG to write")] = Path("reports/anchors.png")
                 ) -> None:
    """Draw the anchors of a few feature cells and the GT boxes on a training image."""
    import json

    from frcnn.config import load_config
    from frcnn.anchor_plots import plot_anchors

    try:
        cfg = load_config(params, parse_overrides(set_))
        gt = json.loads(Path(data).read_text())
        plot_anchors(cfg, gt, Path(data).parent, index, out)
    except (ConfigError, OSError, json.JSONDecodeError, IndexError) as exc:
        _fail(exc)
    typer.echo(f"-> {out}")


@app.command()
def report(params: ParamsOpt = Path("params.yaml")) -> None:
    """This run's report: reports/report.md (metrics, per-class AP, published baselines)."""
    from frcnn.pipeline import run_report

    try:
        path = run_report(params)
    except (ConfigError, OSError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"-> {path}")


@app.command()
def ablate(grid: Annotated[str | None, typer.Option(help="grid of ablations.yaml (default: all)")] = None,
           seeds: Annotated[int, typer.Option(min=1, help="runs per setting, seeds 0..N-1")] = 1,
           set_: SetOpt = None,
           grids_file: Annotated[Path, typer.Option("--grids", help="grid file")] = Path("ablations.yaml"),
           dry_run: Annotated[bool, typer.Option(help="print the dvc commands only")] = False,
           jobs: Annotated[int, typer.Option(min=1, help="experiments at once")] = 1) -> None:
    """Queue the ablation grid as DVC experiments and run them (`dvc exp run --run-all`)."""
    from frcnn.ablation import load_grids, plan, queue_and_run

    try:
        runs = plan(load_grids(grids_file), grid, seeds, parse_overrides(set_))
    except ConfigError as exc:
        _fail(exc)
    for run in runs:
        typer.echo(run.shell())
    if dry_run:
        typer.echo(f"dvc exp run --run-all -j {jobs}")
        return
    queue_and_run(runs, Path("."), jobs)
    typer.echo("done: `frcnn compare` tabulates them against the baseline")


@app.command()
def compare(out: Annotated[Path, typer.Option(help="output folder")] = Path("reports"),
            group: Annotated[str | None, typer.Option(
                help="only this ablation group (grid name); its shared settings, e.g. a reduced "
                     "train.max_steps, then count as its baseline")] = None) -> None:
    """Every evaluated MLflow run against the baseline: reports/ablations.{md,csv,png}."""
    from frcnn.ablation import (ablation_table, runs_from_mlflow, to_markdown,
                                write_ablation_outputs)
    from frcnn.tracking import experiment_name, tracking_uri

    runs = runs_from_mlflow(tracking_uri(Path(".")), experiment_name())
    if group is not None:
        runs = [r for r in runs if r["group"] == group]
    rows = ablation_table(runs)
    if not rows:
        _fail(ValueError(f"no evaluated runs in {tracking_uri(Path('.'))}: run `make repro` first"))
    write_ablation_outputs(rows, to_markdown(rows), out)
    typer.echo(to_markdown(rows))


@app.command()
def bench(quick: Annotated[bool, typer.Option(help="~2 minutes on 2 CPU cores")] = False,
          params: ParamsOpt = Path("params.yaml"),
          out: Annotated[Path, typer.Option(help="output folder")] = Path("reports")) -> None:
    """Ours vs torchvision's Faster R-CNN (same backbone, anchors, heads): time and memory ratios."""
    from frcnn.bench import run_bench

    run_bench(quick, out_dir=out, config_path=params)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
