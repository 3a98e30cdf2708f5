"""`frcnn <command>`: the pipeline's stages (the same functions DVC runs) and the tools around them.

Every stage command reads `--params params.yaml`; `--set key=value` (repeatable) overrides one
key for this run only, e.g. `frcnn train --set loss.lambda=10 --set train.max_steps=50`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from frcnn.deploy import export
from frcnn.errors import ConfigError, DataError
from frcnn.pipeline import (
    augment,
    download,
    evaluate,
    explain,
    predict,
    preprocess,
    pretrain,
    report,
    train,
)
from frcnn.pipeline.command import (  # noqa: F401
    ParamsOpt,
    SetOpt,
    fail,
    load,
    parse_overrides,
    user_errors,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Faster R-CNN from first principles: pipeline stages and tools.")

for _name, _stage in [("export", export), ("download", download), ("preprocess", preprocess), ("augment", augment),
                      ("pretrain", pretrain), ("train", train), ("evaluate", evaluate),
                      ("report", report), ("predict", predict), ("explain", explain)]:
    app.command(_name)(_stage.command)


anchors_app = typer.Typer(no_args_is_help=True, help="Look at the anchors before training.")
app.add_typer(anchors_app, name="anchors")

DataOpt = Annotated[Path, typer.Option(help="COCO-format GT json")]


@anchors_app.command("analyze")
def anchors_analyze(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                    data: DataOpt = Path("data/processed/trainval.json"),
                    out: Annotated[Path, typer.Option(help="output folder")] = Path("reports")) -> None:
    """How well the configured anchors cover the GT boxes; k-means suggestions; JSON + plot."""
    from frcnn.fileio import atomic_write_json
    from frcnn.model.backbone import backbone_stride
    from frcnn.ops.anchors import anchor_scales_px
    from frcnn.tools.anchor_analysis import analyze_coco
    from frcnn.tools.anchor_plots import plot_anchor_coverage

    cfg = load(params, set_)
    with user_errors(OSError, json.JSONDecodeError):
        gt = json.loads(Path(data).read_text())
    stride = backbone_stride(cfg.model.backbone)
    with user_errors():
        try:
            result = analyze_coco(gt, anchor_scales_px(cfg.anchors.scales, cfg.anchors.unit, stride),
                                  cfg.anchors.ratios, stride, cfg.model.min_size, cfg.model.max_size,
                                  cfg.rpn.pos_iou_thresh, cfg.rpn.border_tolerance, seed=cfg.seed)
        except (KeyError, ValueError) as exc:  # not COCO GT, or no box to analyse
            raise DataError(f"{data}: {exc}") from None
    best = result.pop("best_iou")
    # a size bucket without boxes has NaN statistics: null in the file, which must be strict JSON
    atomic_write_json(out / "anchor_coverage.json", result)
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
    from frcnn.tools.anchor_plots import plot_anchors

    cfg = load(params, set_)
    with user_errors(OSError, json.JSONDecodeError, IndexError):
        gt = json.loads(Path(data).read_text())
        plot_anchors(cfg, gt, Path(data).parent, index, out)
    typer.echo(f"-> {out}")


def ui_url(host: str, port: int, experiment_id: str | None) -> str:
    """The MLflow UI on the training runs: MLflow 3 opens an experiment in its GenAI view unless
    the browser switched to "Model training" before; the query parameter switches it."""
    base = f"http://{host}:{port}/#/experiments"
    return f"{base}/{experiment_id}?workflowType=machine_learning" if experiment_id else \
        f"{base}?workflowType=machine_learning"


@app.command()
def ui(host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="port")] = 5000) -> None:
    """The MLflow UI on this project's store (mlflow.db, or MLFLOW_TRACKING_URI if set), with the
    link that opens the frcnn experiment on its training runs."""
    import os
    import subprocess

    from frcnn.pipeline.tracking import experiment_name, tracking_root, tracking_uri

    uri = tracking_uri(tracking_root(Path(".")))
    if uri.startswith(("http://", "https://")):
        fail(ConfigError(f"MLFLOW_TRACKING_URI={uri}: that server has its own UI: open "
                         f"{uri}/#/experiments?workflowType=machine_learning"))
    exp = None
    try:
        import mlflow

        found = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment_name())
        exp = found.experiment_id if found else None
    except Exception:  # noqa: BLE001 -- no store yet: the UI still starts, on the list
        exp = None
    typer.echo(f"MLflow UI: {ui_url(host, port, exp)}  (Ctrl-C stops it)")
    artifacts = Path("mlruns").resolve()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--workers", "1", "--backend-store-uri", uri, "--artifacts-destination", str(artifacts)]
    try:
        raise typer.Exit(code=subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(code=0) from None


@app.command()
def register(checkpoint: Annotated[Path, typer.Option(help="the train run is this checkpoint's")] = Path("models/model.pt"),
             run: Annotated[str | None, typer.Option("--run", help="MLflow run id (default: the checkpoint's run)")] = None,
             name: Annotated[str, typer.Option(help="registered model name")] = "frcnn",
             alias: Annotated[str | None, typer.Option(help="point this alias (e.g. candidate) at the new version")] = None,
             ) -> None:
    """Register the MLflow model a train run logged (tracking.log_model) as a new model version."""
    from frcnn.deploy.mlflow_model import register as register_model
    from frcnn.engine.checkpoint import load_checkpoint
    from frcnn.pipeline.tracking import tracking_root, tracking_uri

    with user_errors():
        run_id = run or load_checkpoint(checkpoint).get("mlflow_run_id") or ""
        if not run_id:
            raise ConfigError(f"{checkpoint}: records no MLflow run (trained without tracking); "
                              "pass --run")
        _, uri = register_model(tracking_uri(tracking_root(Path("."))), run_id, name, alias)
    typer.echo(f"registered {uri} (run {run_id})" + (f", alias {alias}" if alias else ""))


@app.command()
def ablate(grid: Annotated[str | None, typer.Option(help="grid of ablations.yaml (default: all)")] = None,
           seeds: Annotated[int, typer.Option(min=1, help="runs per setting, seeds 0..N-1")] = 1,
           set_: SetOpt = None,
           params: ParamsOpt = Path("params.yaml"),
           grids_file: Annotated[Path, typer.Option("--grids", help="grid file")] = Path("ablations.yaml"),
           dry_run: Annotated[bool, typer.Option(help="list the planned runs and their dvc exp run lines")] = False,
           records: Annotated[Path, typer.Option(help="one JSON record per finished run")] = Path("reports/ablations/runs"),
           workdir: Annotated[Path, typer.Option(help="run folders: checkpoints, logs (not committed)")] = Path(".study"),
           data: Annotated[Path, typer.Option(help="training split")] = Path("data/augmented/trainval.json"),
           test: Annotated[Path, typer.Option(help="test split")] = Path("data/processed/test.json"),
           backbone: Annotated[Path, typer.Option(help="pretrain's output")] = Path("models/backbone.pt"),
           timing: Annotated[int, typer.Option(min=0, help="instead of the study: time each setting for N "
                                                          "training steps, one at a time (a quiet machine)")] = 0,
           ) -> None:
    """Run the ablation study: every (setting, seed) of the grid not yet recorded trains and
    evaluates through the stage scripts, and ends as a record in reports/ablations/runs/."""
    import yaml

    from frcnn.fileio import atomic_write_json
    from frcnn.tools.study import (
        StudyPaths,
        analyse,
        load_study_file,
        plan_study,
        run_study,
        time_settings,
    )

    with user_errors(OSError, yaml.YAMLError):
        grids, test_only = load_study_file(grids_file)
        base = yaml.safe_load(Path(params).read_text()) or {}
        # ~40 runs need no MLflow model each (the study's records are keyed without tracking.*)
        runs = plan_study(grids, base, grid, seeds,
                          {"tracking.log_model": False, **parse_overrides(set_)})
    for run in runs:
        typer.echo(f"{run.name:45s} {run.dvc_command()}")
    if dry_run:
        return
    for path in (data, test):
        if not path.is_file():
            fail(DataError(f"{path}: not found; run `dvc repro augment` first (the study reuses "
                           "the pipeline's data)"))
    paths = StudyPaths(project=Path.cwd(), train_json=data, test_json=test, backbone=backbone,
                       records=records, workdir=workdir)
    if timing:
        with user_errors(RuntimeError, ValueError):
            result = time_settings(runs, paths, base, timing, echo=typer.echo)
        atomic_write_json(records.parent / "timing.json", result, sort_keys=True, indent=1)
        typer.echo(f"-> {records.parent / 'timing.json'}")
        return
    with user_errors(RuntimeError, ValueError):
        written = run_study(runs, paths, echo=typer.echo,
                            analyse=lambda run, run_dir, _rec: analyse(run, run_dir, paths, test_only))
    typer.echo(f"{len(written)} new record(s) in {records}: `frcnn compare` tabulates them")


@app.command()
def exp(preset: Annotated[str | None, typer.Argument(help="a preset of presets.yaml")] = None,
        set_: SetOpt = None,
        dry_run: Annotated[bool, typer.Option(help="print the dvc exp run command, run nothing")] = False,
        list_: Annotated[bool, typer.Option("--list", help="the presets, what the references report, their cost")] = False,
        name: Annotated[str | None, typer.Option(help="experiment name (default: the preset's)")] = None,
        queue: Annotated[bool, typer.Option(help="queue it (dvc exp run --queue) instead of running")] = False,
        presets_file: Annotated[Path, typer.Option("--presets", help="preset file")] = Path("presets.yaml"),
        params: ParamsOpt = Path("params.yaml"),
        ) -> None:
    """Run a named recipe (e.g. `frcnn exp voc07-r50c4`) as one `dvc exp run -n NAME -S ...`."""
    import shutil
    import subprocess

    import yaml

    from frcnn.tools.presets import describe, load_presets

    with user_errors(OSError, yaml.YAMLError):
        presets = load_presets(presets_file)
        if list_ or preset is None:
            typer.echo("\n\n".join(describe(p) for p in presets.values()))
            return
        if preset not in presets:
            raise ConfigError(f"{preset}: not a preset of {presets_file} (known: "
                              f"{', '.join(presets)})")
        chosen, extra = presets[preset], parse_overrides(set_)
        cfg = chosen.config(yaml.safe_load(Path(params).read_text()) or {}, extra)
    from frcnn.model.build import recipe_warnings

    for line in recipe_warnings(cfg):
        typer.echo(f"exp: warning: {line}", err=True)
    command = chosen.command(extra, name) + (["--queue"] if queue else [])
    if dry_run:
        typer.echo(shlex.join(command))
        return
    # the dvc beside this Python (the venv's) when the shell's PATH has none
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    typer.echo(f"exp: {shlex.join(command)}", err=True)
    raise typer.Exit(subprocess.call([dvc, *command[1:]]))


@app.command()
def errors(detections: Annotated[Path, typer.Option(help="COCO results")] = Path("data/detections/test.json"),
           test: Annotated[Path, typer.Option(help="the split they were made on")] = Path("data/processed/test.json"),
           out: Annotated[Path, typer.Option(help="output folder")] = Path("reports"),
           t_f: Annotated[float, typer.Option(min=0.0, max=1.0, help="foreground IoU")] = 0.5,
           t_b: Annotated[float, typer.Option(min=0.0, max=1.0, help="background IoU")] = 0.1) -> None:
    """Where the AP50 goes (TIDE): each false positive typed, ΔAP50 per type, errors.{json,png}."""
    from frcnn.evaluation.errors import tide_breakdown
    from frcnn.fileio import atomic_write_json
    from frcnn.plots.evaluation import plot_errors

    with user_errors(OSError, json.JSONDecodeError, KeyError, ValueError):
        if t_b > t_f:
            raise ValueError(f"--t-b {t_b}: must be <= --t-f {t_f}")
        result = tide_breakdown(json.loads(test.read_text()), json.loads(detections.read_text()),
                                t_f, t_b)
        atomic_write_json(out / "errors.json", result, sort_keys=True)
        plot_errors(result, out / "errors.png")
    typer.echo(json.dumps(result, indent=2))


@app.command()
def compare(out: Annotated[Path, typer.Option(help="output folder")] = Path("reports"),
            group: Annotated[str | None, typer.Option(help="only this question (grid name)")] = None,
            records: Annotated[Path, typer.Option(help="the study's records")] = Path("reports/ablations/runs"),
            mlflow: Annotated[bool, typer.Option("--mlflow", help="read the runs from the MLflow store instead")] = False,
            timing: Annotated[Path, typer.Option(help="the timing records")] = Path("reports/ablations/timing.json"),
            params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
            grids_file: Annotated[Path, typer.Option("--grids", help="grid file")] = Path("ablations.yaml"),
            env: Annotated[str | None, typer.Option(help="report the runs of the environment whose "
                                                          "label contains this (default: the one with most runs)")] = None,
            ) -> None:
    """The study's report, reports/ablations.{md,csv} + plots, rebuilt from the committed records
    (or from MLflow with --mlflow). `--set train.max_steps=N`: the budget the study ran at."""
    import yaml

    from frcnn.pipeline.tracking import experiment_name, tracking_uri
    from frcnn.tools.ablation import (
        build_report,
        load_grids,
        load_questions,
        runs_from_mlflow,
        runs_from_records,
    )
    from frcnn.tools.study import load_records

    with user_errors(OSError, yaml.YAMLError, json.JSONDecodeError, ValueError):
        grids, questions = load_grids(grids_file), load_questions(grids_file)
        base = yaml.safe_load(Path(params).read_text()) or {}
        if mlflow:
            source = tracking_uri(Path("."))
            runs = runs_from_mlflow(source, experiment_name())
        else:
            source = f"the records in {records}"
            runs = runs_from_records(load_records(records))
        times = json.loads(timing.read_text()).get("settings", {}) if timing.is_file() else {}
        markdown = build_report(runs, grids, questions, base, parse_overrides(set_), times, out,
                                source, group, env)
    typer.echo(markdown)


@app.command()
def bench(quick: Annotated[bool, typer.Option(help="~2 minutes on 2 CPU cores")] = False,
          params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
          out: Annotated[Path, typer.Option(help="output folder")] = Path("reports")) -> None:
    """Ours vs torchvision's Faster R-CNN (same backbone, anchors, heads): time and memory ratios."""
    import frcnn

    repo = Path(frcnn.__file__).resolve().parents[1]
    if not (repo / "benchmarks" / "bench.py").is_file():
        fail(ValueError(f"{repo / 'benchmarks'}: not found; `frcnn bench` runs from a source "
                        "checkout of frcnn (the benchmarks are not part of the installed package)"))
    sys.path.insert(0, str(repo))
    from benchmarks.bench import run_bench

    with user_errors():
        overrides = parse_overrides(set_)
    run_bench(quick, out_dir=out, config_path=params, overrides=overrides)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
