"""Ablations: DVC experiments planned from `ablations.yaml`, compared from MLflow.

A grid is a list of settings, each a dict of dotted params overrides (`{loss.lambda: 10}`);
every setting runs once per seed as one `dvc exp run --queue -n <grid>-<i>-s<seed> -S ...`.
Each run's MLflow tags say what it varies against its baseline params.yaml (`ablation.varied`,
computed by diffing the params, so it cannot drift from what ran), its group and baseline rev.
`compare` aggregates runs by setting (mean ± std over seeds) against the baseline setting.
"""

from __future__ import annotations

import math
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from frcnn.config import ConfigError, config_from_dict
from frcnn.pipeline.report import PUBLISHED


@dataclass(frozen=True)
class PlannedRun:
    name: str                      # DVC experiment name
    overrides: dict[str, Any]      # dotted params -> value, seed included

    def shell(self) -> str:
        return shlex.join(self.command())

    def command(self) -> list[str]:
        cmd = ["dvc", "exp", "run", "--queue", "-n", self.name]
        for key, value in self.overrides.items():
            cmd += ["-S", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
        return cmd


def load_grids(path: Path) -> dict[str, list[dict[str, Any]]]:
    """ablations.yaml -> {grid name: [settings]}; every setting is checked against the config."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    grids = raw.get("grids")
    if not isinstance(grids, dict) or not grids:
        raise ConfigError(f"{path}: needs a non-empty `grids:` mapping of name -> list of settings")
    for name, settings in grids.items():
        if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
            raise ConfigError(f"{path}: grids.{name} must be a list of {{param: value}} mappings")
        for s in settings:
            try:
                config_from_dict({}, s)
            except ConfigError as exc:
                raise ConfigError(f"{path}: grids.{name}: {exc}") from None
    return grids


def plan(grids: dict[str, list[dict[str, Any]]], grid: str | None, seeds: int,
         extra: dict[str, Any] | None = None) -> list[PlannedRun]:
    """The runs of one grid (or all), each setting once per seed 0..seeds-1, plus `extra` overrides
    (e.g. `train.max_steps` for a quick CPU study)."""
    if grid is not None and grid not in grids:
        raise ConfigError(f"--grid {grid}: unknown grid (known: {', '.join(grids)})")
    runs = []
    for name in [grid] if grid else list(grids):
        for i, setting in enumerate(grids[name]):
            for seed in range(seeds):
                runs.append(PlannedRun(f"{name}-{i}-s{seed}", {**setting, **(extra or {}), "seed": seed}))
    return runs


def queue_and_run(runs: list[PlannedRun], cwd: Path, jobs: int = 1) -> None:
    for run in runs:
        subprocess.run(run.command(), cwd=cwd, check=True)
    subprocess.run(["dvc", "exp", "run", "--run-all", "-j", str(jobs)], cwd=cwd, check=True)


# ---------------------------------------------------------------- tags for a run


# ---------------------------------------------------------------- comparison


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


COLUMNS = [("map", "mAP@[.5:.95]"), ("ap50", "AP50 (COCO)"), ("voc07_ap50", "VOC07 AP50")]


def ablation_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """runs [{varied, group, metrics{...}}] -> one row per setting, baseline first, with mean, std,
    n and delta vs the baseline setting for each metric."""
    # keys every run shares (e.g. a study-wide train.max_steps) say nothing about the setting
    parsed = [set() if r["varied"] == "baseline" else set(r["varied"].split("; ")) for r in runs]
    common = set.intersection(*parsed) if parsed else set()
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for run, items in zip(runs, parsed):
        label = "; ".join(sorted(items - common)) or "baseline"
        by_setting.setdefault(label, []).append(run)
    base_runs = by_setting.get("baseline", [])
    base = {k: _mean_std([r["metrics"].get(k) for r in base_runs])[0] for k, _ in COLUMNS}
    rows = []
    for varied in sorted(by_setting, key=lambda v: (v != "baseline", v)):
        group = by_setting[varied]
        row: dict[str, Any] = {"setting": varied,
                               "group": ",".join(sorted({r["group"] for r in group})),
                               "runs": len(group), "shared": "; ".join(sorted(common))}
        for key, _ in COLUMNS:
            mean, std = _mean_std([r["metrics"].get(key) for r in group])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
            row[f"{key}_delta"] = mean - base[key] if base_runs else float("nan")
        row["train_seconds"] = _mean_std([r["metrics"].get("train.train_seconds") for r in group])[0]
        row["images_per_s"] = _mean_std([r["metrics"].get("train.images_per_s") for r in group])[0]
        rows.append(row)
    return rows


def runs_from_mlflow(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """Finished runs with an evaluation (metric `map`) from the MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    out = []
    for run in client.search_runs([exp.experiment_id], filter_string="metrics.map >= 0",
                                  max_results=5000):
        tags = run.data.tags
        out.append({"run_id": run.info.run_id, "varied": tags.get("ablation.varied", "baseline"),
                    "group": tags.get("ablation.group", ""), "metrics": dict(run.data.metrics)})
    return out


def _fmt(mean: float, std: float, runs: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if runs > 1 else f"{mean:.3f}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = ["setting", "runs"] + [f"{label}" for _, label in COLUMNS] + ["Δ mAP", "Δ AP50",
                                                                         "train s", "img/s"]
    lines = ["# Ablations (measured here)", "",
             "Mean ± sample std over seeds; Δ against the `baseline` setting (params.yaml as "
             "committed). COCO AP50 (101-point, IoU ≥ 0.5, pycocotools) and VOC07 AP50 (11-point, "
             "devkit rules) are different metrics: compare like with like."]
    if rows and rows[0]["shared"]:
        lines += ["", f"Every run here also has: `{rows[0]['shared']}` (the study's own setting)."]
    lines += ["",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["setting"], str(r["runs"])] + [_fmt(r[f"{k}_mean"], r[f"{k}_std"], r["runs"])
                                                  for k, _ in COLUMNS]
        cells += [f"{r['map_delta']:+.3f}" if not math.isnan(r["map_delta"]) else "–",
                  f"{r['ap50_delta']:+.3f}" if not math.isnan(r["ap50_delta"]) else "–",
                  f"{r['train_seconds']:.0f}" if not math.isnan(r["train_seconds"]) else "–",
                  f"{r['images_per_s']:.1f}" if not math.isnan(r["images_per_s"]) else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "# Published results (not measured here; VOC2007 test, AP50 %)", "",
              "| method | mAP (VOC07) | speed |", "|---|---|---|"]
    lines += [f"| {m} | {ap} | {speed} |" for m, ap, speed in PUBLISHED]
    return "\n".join(lines) + "\n"


def write_ablation_outputs(rows: list[dict[str, Any]], markdown: str, out: Path) -> None:
    """reports/ablations.md, .csv and .png (mAP and AP50 per setting, error bars over seeds)."""
    import csv
    import io

    import matplotlib.pyplot as plt

    from frcnn.fileio import atomic_savefig, atomic_write_text

    atomic_write_text(out / "ablations.md", markdown)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "ablations.csv", buf.getvalue())
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    x = range(len(rows))
    for offset, (key, label) in zip((-0.2, 0.2), COLUMNS[:2]):
        ax.bar([i + offset for i in x], [r[f"{key}_mean"] for r in rows], width=0.4,
               yerr=[r[f"{key}_std"] for r in rows], capsize=3, label=label)
    ax.set_xticks(list(x), [r["setting"].replace("; ", "\n") for r in rows], fontsize=7,
                  rotation=20, ha="right")
    ax.set_ylabel("AP on the test split")
    ax.set_title("Ablations vs baseline (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out / "ablations.png")
    plt.close(fig)
