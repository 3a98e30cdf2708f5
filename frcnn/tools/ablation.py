"""The ablation study's questions and answers: `ablations.yaml` read and checked, and the report.

`ablations.yaml` holds the grids (each a list of settings: dotted params -> value, the baseline
among them), the inference-only knobs re-evaluated on the baseline's checkpoints (`test_only`), and
per grid the reference design's expectation with the checks that test it (`questions`).

The report is rebuilt from runs, wherever they come from: the study's committed records
(`reports/ablations/runs/*.json`, see `frcnn.tools.study`) or an MLflow store. A run belongs to a
setting when its full params equal params.yaml + the setting (+ the study's budget), whatever its
name; settings are compared with the baseline over the seeds both have (paired differences, a
Student-t 95 % interval), inside one environment (CPU, precision, torch, threads) at a time.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from frcnn.config import ConfigError, config_from_dict
from frcnn.pipeline.report import PUBLISHED

METRICS = [("map", "mAP"), ("ap50", "AP50"), ("ap75", "AP75"), ("voc07_ap50", "VOC07")]
ERROR_LABELS = {"classification": "cls", "localisation": "loc", "both": "both",
                "duplicate": "dupl", "background": "bkg", "missed": "miss"}
# two-sided 95 % Student-t quantiles by degrees of freedom (n seeds - 1)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def load_grids(path: Path) -> dict[str, list[dict[str, Any]]]:
    """ablations.yaml -> {grid name: [settings]}; every setting is checked against the config."""
    raw = _read(path)
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


def load_questions(path: Path) -> dict[str, dict[str, Any]]:
    """ablations.yaml's `questions`: grid -> {expected: text, checks: [{claim, metric, higher,
    than}]}; `higher`/`than` are settings of that grid, `metric` a key of a run's metrics."""
    raw = _read(path)
    grids = raw.get("grids") or {}
    questions = raw.get("questions") or {}
    for name, q in questions.items():
        if name not in grids:
            raise ConfigError(f"{path}: questions.{name}: no grid of that name")
        for i, check in enumerate(q.get("checks") or []):
            missing = {"claim", "metric", "higher", "than"} - set(check)
            if missing:
                raise ConfigError(f"{path}: questions.{name}.checks[{i}]: needs "
                                  f"{', '.join(sorted(missing))}")
            for side in ("higher", "than"):
                if check[side] not in grids[name] and check[side] != {}:
                    raise ConfigError(f"{path}: questions.{name}.checks[{i}].{side}: "
                                      f"{check[side]} is not a setting of grids.{name}")
    return questions


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `grids:`")
    return raw


# ------------------------------------------------------------------ runs, from records or MLflow


def _env_label(env: dict[str, Any] | None) -> str:
    if not env:
        return "unknown environment"
    return (f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')}), "
            f"{env.get('train_precision', '?')} training, torch {env.get('torch', '?')}, "
            f"{env.get('threads', '?')} threads")


def _canonical(params: dict[str, Any]) -> dict[str, Any] | None:
    """A run's params as the code reads them (study.canonical_params), None if it no longer can;
    without `tracking.*`, which only decides what is logged (as in study.run_key): a run recorded
    before `frcnn ablate` turned `tracking.log_model` off is the same setting as one after."""
    from frcnn.tools.study import canonical_params

    try:
        params = canonical_params(params)
    except ConfigError:
        return None
    params.pop("tracking", None)
    return params


def runs_from_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as runs, params canonical (a record older than a knob compares with today's
    baseline); records of knobs this code no longer has are left out."""
    out = []
    for r in records:
        params = _canonical(r["params"])
        if params is None:
            continue
        out.append({"name": r["name"], "seed": params["seed"], "params": params,
                    "metrics": r["metrics"], "errors": r.get("errors"),
                    "rpn_recall": r.get("rpn_recall"), "test_only": r.get("test_only") or [],
                    "train": r.get("train") or {}, "env": _env_label(r.get("environment")),
                    "commit": r.get("commit", "")})
    return out


def runs_from_mlflow(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """Finished runs with an evaluation (metric `map`) from an MLflow store, their params parsed
    back into a full config; runs whose params no longer make a valid config are left out."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    out = []
    for run in client.search_runs([exp.experiment_id], filter_string="metrics.map >= 0",
                                  max_results=5000):
        try:
            flat = {k: yaml.safe_load(v) for k, v in run.data.params.items()}
            params = _canonical(config_from_dict({}, flat).to_dict())
        except (ConfigError, yaml.YAMLError, TypeError, ValueError):
            continue
        if params is None:
            continue
        m = dict(run.data.metrics)
        errors = None
        if any(k.startswith("errors.") for k in m):
            errors = {"delta_ap50": {t: m[f"errors.{t}"] for t in ERROR_LABELS if f"errors.{t}" in m}}
        out.append({"name": run.info.run_name or run.info.run_id, "seed": params["seed"],
                    "params": params, "metrics": m, "errors": errors, "rpn_recall": None,
                    "test_only": [], "train": {"train_seconds": m.get("train.train_seconds"),
                                               "images_per_s": m.get("train.images_per_s")},
                    "env": (f"{run.data.tags.get('host', '?')}, torch "
                            f"{run.data.tags.get('torch', '?')}"),
                    "commit": run.data.tags.get("git.commit", "")})
    return out


# ------------------------------------------------------------------ statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def t95(df: int) -> float:
    if df <= 0:
        return float("nan")
    known = [k for k in sorted(_T95) if k <= df]
    return _T95[known[-1]] if df > 30 or df not in _T95 else _T95[df]


def paired_delta(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Mean of a[seed] - b[seed] over the seeds both have, with its 95 % t interval."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    mean, std = mean_std(diffs)
    half = t95(len(diffs) - 1) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"n": len(diffs), "mean": mean, "lo": mean - half, "hi": mean + half}


def verdict(delta: dict[str, Any]) -> str:
    """A claim "higher > than" against the paired interval of (higher - than)."""
    if delta["n"] < 2 or math.isnan(delta["lo"]):
        return "not testable (fewer than 2 paired seeds)"
    if delta["lo"] > 0:
        return "confirmed"
    if delta["hi"] < 0:
        return "contradicted"
    return "not distinguishable from noise"


# ------------------------------------------------------------------ tables


def setting_label(setting: dict[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in setting.items()) or "baseline"


def timing_key(base: dict[str, Any], extra: dict[str, Any], setting: dict[str, Any]) -> str:
    """What a setting changes against the baseline, as canonical JSON ("{}" for the baseline):
    the key of its entry in the timing records, the same for every spelling of a setting."""
    from frcnn.config import flatten

    b = flatten(config_from_dict(base, extra).to_dict())
    c = flatten(config_from_dict(base, {**extra, **setting}).to_dict())
    return json.dumps({k: c[k] for k in sorted(c) if c[k] != b.get(k) and k != "seed"},
                      sort_keys=True)


def _strip_seed(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "seed"}


def runs_of(runs: Sequence[dict[str, Any]], base: dict[str, Any], setting: dict[str, Any],
            extra: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The runs of one setting, by seed (a later duplicate of a seed is ignored)."""
    want = _strip_seed(_canonical(config_from_dict(base, {**extra, **setting}).to_dict()))
    out: dict[int, dict[str, Any]] = {}
    for run in runs:
        if _strip_seed(run["params"]) == want:
            out.setdefault(int(run["seed"]), run)
    return out


def _metric(run: dict[str, Any], path: str) -> float:
    """A dotted path into a run: "metrics.ap50", "errors.delta_ap50.localisation", ..."""
    node: Any = run
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return float("nan")
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else float("nan")


def question_table(runs: Sequence[dict[str, Any]], base: dict[str, Any],
                   settings: Sequence[dict[str, Any]], extra: dict[str, Any],
                   timing: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per setting of a grid, baseline first."""
    baseline_cfg = config_from_dict(base, extra).to_dict()
    ordered = sorted(settings, key=lambda s: config_from_dict(base, {**extra, **s}).to_dict()
                     != baseline_cfg)
    baseline = runs_of(runs, base, {}, extra)
    rows = []
    for setting in ordered:
        by_seed = runs_of(runs, base, setting, extra)
        is_base = config_from_dict(base, {**extra, **setting}).to_dict() == baseline_cfg
        row: dict[str, Any] = {"setting": setting_label(setting) + (" (baseline)" if is_base and setting else ""),
                               "baseline": is_base, "seeds": sorted(by_seed), "n": len(by_seed)}
        for key, _ in METRICS + [("ap_small", ""), ("ap_large", "")]:
            vals = {s: _metric(r, f"metrics.{key}") for s, r in by_seed.items()}
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(list(vals.values()))
            row[f"{key}_delta"] = paired_delta(vals, {s: _metric(r, f"metrics.{key}")
                                                      for s, r in baseline.items()})
        moved = []
        for err, label in ERROR_LABELS.items():
            path = f"errors.delta_ap50.{err}"
            d = paired_delta({s: _metric(r, path) for s, r in by_seed.items()},
                             {s: _metric(r, path) for s, r in baseline.items()})
            row[f"tide_{err}"] = mean_std([_metric(r, path) for r in by_seed.values()])[0]
            if not is_base and d["n"] >= 2 and (d["lo"] > 0 or d["hi"] < 0):
                moved.append(f"{label} {d['mean']:+.3f}")
        row["tide_moved"] = ", ".join(moved)
        for key in ("recall@0.5", "recall@0.7", "proposals_per_image"):
            row[f"rpn_{key}"] = mean_std([float((r.get("rpn_recall") or {}).get(key, math.nan))
                                          for r in by_seed.values()])[0]
        t = timing.get(timing_key(base, extra, setting), {})
        row["step_seconds"] = t.get("step_seconds", float("nan"))
        row["images_per_s"] = t.get("images_per_s", float("nan"))
        rows.append(row)
    return rows


def inference_only_table(runs: Sequence[dict[str, Any]], base: dict[str, Any],
                    extra: dict[str, Any]) -> list[dict[str, Any]]:
    """The inference-only knobs: each value against the baseline checkpoints' own evaluation."""
    baseline = runs_of(runs, base, {}, extra)
    values: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for seed, run in baseline.items():
        for row in run["test_only"]:
            values.setdefault((row["key"], json.dumps(row["value"])), {})[seed] = row
    rows = []
    for (key, value), by_seed in sorted(values.items()):
        row: dict[str, Any] = {"setting": f"{key}={json.loads(value)}", "n": len(by_seed)}
        for metric, _ in METRICS:
            vals = {s: _metric(r, f"metrics.{metric}") for s, r in by_seed.items()}
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(list(vals.values()))
            row[f"{metric}_delta"] = paired_delta(
                vals, {s: _metric(r, f"metrics.{metric}") for s, r in baseline.items()})
        row["num_detections"] = mean_std([_metric(r, "metrics.num_detections")
                                          for r in by_seed.values()])[0]
        rows.append(row)
    return rows


def check_claims(runs: Sequence[dict[str, Any]], base: dict[str, Any], question: dict[str, Any],
                 extra: dict[str, Any], timing: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    for check in question.get("checks") or []:
        metric = check["metric"]
        if metric in ("images_per_s", "step_seconds"):
            a = timing.get(timing_key(base, extra, check["higher"]), {}).get(metric)
            b = timing.get(timing_key(base, extra, check["than"]), {}).get(metric)
            if a is None or b is None:
                result = "not measured (no timing records)"
            else:
                result = "confirmed" if a > b else "contradicted"
            out.append({"claim": check["claim"], "delta": None, "verdict": result,
                        "detail": "" if a is None or b is None else f"{a:.2f} vs {b:.2f}"})
            continue
        path = metric if "." in metric else f"metrics.{metric}"
        hi = {s: _metric(r, path) for s, r in runs_of(runs, base, check["higher"], extra).items()}
        lo = {s: _metric(r, path) for s, r in runs_of(runs, base, check["than"], extra).items()}
        delta = paired_delta(hi, lo)
        detail = "" if delta["n"] == 0 else f"Δ {_delta(delta)}, n={delta['n']}"
        out.append({"claim": check["claim"], "delta": delta, "verdict": verdict(delta),
                    "detail": detail})
    return out


# ------------------------------------------------------------------ the report




def _pm(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _delta(d: dict[str, Any]) -> str:
    if d["n"] == 0 or math.isnan(d["mean"]):
        return "–"
    if d["n"] < 2:
        return f"{d['mean']:+.4f}"
    return f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def _num(x: float, fmt: str) -> str:
    return "–" if x is None or math.isnan(x) else format(x, fmt)


def to_markdown(sections: list[dict[str, Any]], test_only: list[dict[str, Any]],
                context: dict[str, Any]) -> str:
    lines = ["# Ablations (measured here)", "",
             f"From {context['source']}. Environment: {context['env']}. Budget: "
             f"{context['budget']} training steps for every run, baseline included. "
             f"{context['excluded']}", "",
             f"**Progress**: {context['runs']} run(s) recorded; {context['complete']} of "
             f"{context['settings']} distinct settings have the 3 seeds a verdict needs.",
             "", "Each cell: mean ± sample std over seeds. Δ: the paired difference to the baseline "
             "over the seeds both have, with its 95 % Student-t interval in brackets. COCO AP "
             "(pycocotools, 101-point) and VOC07 AP50 (11-point, devkit rules) are different "
             "metrics: compare like with like. TIDE: the error types whose ΔAP50 (what fixing that "
             "type alone would add, VOC all-point AP50) moved against the baseline with an "
             "interval excluding 0 (cls, loc, both, dupl, bkg, miss). RPN recall: of the "
             "non-difficult test GT by the top 300 proposals. Step time and images/s come from a "
             "separate timing of each setting (`frcnn ablate --timing`), not from the study runs, "
             "which share the machine with other work."]
    for sec in sections:
        lines += ["", f"## {sec['grid']}: {sec['expected'] or ''}".rstrip(": "), ""]
        lines += [f"Changes training (every row retrained). Plot: `ablations/{sec['grid']}.png`.", ""]
        head = ["setting", "n", "mAP", "AP50", "AP75", "VOC07", "Δ mAP", "Δ AP50", "Δ AP75",
                "TIDE moved", "RPN R@0.5 / 0.7", "s/step", "img/s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sec["rows"]:
            cells = [r["setting"], str(r["n"])]
            cells += [_pm(r[f"{k}_mean"], r[f"{k}_std"], r["n"]) for k, _ in METRICS]
            cells += ["" if r["baseline"] else _delta(r[f"{k}_delta"]) for k in ("map", "ap50", "ap75")]
            cells += [r["tide_moved"] or ("" if r["baseline"] else "–"),
                      f"{_num(r['rpn_recall@0.5'], '.3f')} / {_num(r['rpn_recall@0.7'], '.3f')}",
                      _num(r["step_seconds"], ".3f"), _num(r["images_per_s"], ".1f")]
            lines.append("| " + " | ".join(cells) + " |")
        if sec["claims"]:
            lines += ["", f"Expected (the reference design): *{sec['expected']}*", "",
                      "| claim | measured | verdict |", "|---|---|---|"]
            lines += [f"| {c['claim']} | {c['detail'] or '–'} | **{c['verdict']}** |"
                      for c in sec["claims"]]
    if test_only:
        lines += ["", "## Inference-only knobs (no retraining)", "",
                  "Each baseline seed's checkpoint re-evaluated with one knob changed; Δ against the "
                  "same checkpoints at the baseline's values.", ""]
        head = ["setting", "n", "mAP", "AP50", "AP75", "VOC07", "Δ mAP", "Δ AP50", "Δ AP75",
                "detections"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in test_only:
            cells = [r["setting"], str(r["n"])]
            cells += [_pm(r[f"{k}_mean"], r[f"{k}_std"], r["n"]) for k, _ in METRICS]
            cells += [_delta(r[f"{k}_delta"]) for k in ("map", "ap50", "ap75")]
            cells.append(_num(r["num_detections"], ".0f"))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Published results (not measured here; VOC2007 test, AP50 %)", "",
              "| method | mAP (VOC07) | speed |", "|---|---|---|"]
    lines += [f"| {m} | {ap} | {speed} |" for m, ap, speed in PUBLISHED]
    return "\n".join(lines) + "\n"


def _csv_rows(sections: list[dict[str, Any]], test_only: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for group, rows in [(s["grid"], s["rows"]) for s in sections] + [("test_only", test_only)]:
        for r in rows:
            flat = {"group": group}
            for k, v in r.items():
                if isinstance(v, dict):
                    flat.update({f"{k}_{kk}": vv for kk, vv in v.items()})
                elif isinstance(v, list):
                    flat[k] = " ".join(map(str, v))
                else:
                    flat[k] = v
            out.append(flat)
    return out


def plot_question(section: dict[str, Any], path: Path) -> None:
    from frcnn.fileio import atomic_savefig
    from frcnn.plots.draw import plt

    rows = section["rows"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows)), 3.6))
    width = 0.8 / len(METRICS[:3])
    for j, (key, label) in enumerate(METRICS[:3]):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ax.bar(xs, [r[f"{key}_mean"] for r in rows], width=width, label=label,
               yerr=[0 if math.isnan(r[f"{key}_std"]) else r[f"{key}_std"] for r in rows], capsize=3)
    ax.set_xticks(range(len(rows)), [f"{r['setting']}\n(n={r['n']})".replace("; ", "\n")
                                     for r in rows], fontsize=7)
    ax.set_ylabel("AP on the test split")
    ax.set_title(f"{section['grid']}: mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    atomic_savefig(fig, path, close=True)


def plot_speed_accuracy(sections: list[dict[str, Any]], path: Path) -> bool:
    from frcnn.fileio import atomic_savefig
    from frcnn.plots.draw import plt

    points = [(s["grid"], r) for s in sections for r in s["rows"]
              if not math.isnan(r["images_per_s"]) and not math.isnan(r["map_mean"])]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for grid, r in points:
        ax.errorbar(r["images_per_s"], r["map_mean"], yerr=r["map_std"], fmt="o", capsize=3)
        ax.annotate(f"{grid}: {r['setting']}", (r["images_per_s"], r["map_mean"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training images/s (separate timing)")
    ax.set_ylabel("mAP@[.5:.95] (mean ± std over seeds)")
    ax.set_title("Every setting: speed vs accuracy", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, close=True)
    return True


def build_report(runs: Sequence[dict[str, Any]], grids: dict[str, list[dict[str, Any]]],
                 questions: dict[str, dict[str, Any]], base: dict[str, Any], extra: dict[str, Any],
                 timing: dict[str, dict[str, float]], out: Path, source: str,
                 group: str | None = None, env_filter: str | None = None) -> str:
    """reports/ablations.{md,csv} and reports/ablations/<grid>.png (+ speed_accuracy.png) from
    `runs`, restricted to one environment (numbers from different CPUs or precisions are never
    paired): the one most of them ran in, or the first whose label contains `env_filter`.
    Returns the markdown."""
    from frcnn.fileio import atomic_write_text

    envs: dict[str, int] = {}
    for run in runs:
        envs[run["env"]] = envs.get(run["env"], 0) + 1
    if not envs:
        raise ValueError(f"{source}: no evaluated runs")
    env = max(envs, key=lambda e: envs[e])
    if env_filter is not None:
        matching = [e for e in envs if env_filter.lower() in e.lower()]
        if not matching:
            raise ValueError(f"--env {env_filter}: no runs from such an environment (have: "
                             f"{'; '.join(envs)})")
        env = matching[0]
    chosen = [r for r in runs if r["env"] == env]
    others = len(runs) - len(chosen)
    budget = config_from_dict(base, extra).train.max_steps
    sections = []
    for name, settings in grids.items():
        if group is not None and name != group:
            continue
        rows = question_table(chosen, base, settings, extra, timing)
        q = questions.get(name, {})
        sections.append({"grid": name, "rows": rows, "expected": q.get("expected", ""),
                         "claims": check_claims(chosen, base, q, extra, timing)})
    tests = inference_only_table(chosen, base, extra) if group is None else []
    distinct = {json.dumps(config_from_dict(base, {**extra, **st}).to_dict(), sort_keys=True): st
                for sec in grids.values() for st in sec}
    complete = sum(len(runs_of(chosen, base, st, extra)) >= 3 for st in distinct.values())
    context = {"source": source, "env": env, "budget": budget, "runs": len(chosen),
               "settings": len(distinct), "complete": complete,
               "excluded": (f"{others} run(s) from other environments are left out ("
                            + "; ".join(f"{e}: {n}" for e, n in envs.items() if e != env)
                            + "; `frcnn compare --env <part of the name>` reports one of them)."
                            if others else "")}
    markdown = to_markdown(sections, tests, context)
    (out / "ablations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablations.md", markdown)
    rows = _csv_rows(sections, tests)
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "ablations.csv", buf.getvalue())
    for sec in sections:
        plot_question(sec, out / "ablations" / f"{sec['grid']}.png")
    plot_speed_accuracy(sections, out / "ablations" / "speed_accuracy.png")
    return markdown
