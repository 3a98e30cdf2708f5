"""The ablation study as content-keyed runs: plan them, run them, record them, skip what is recorded.

A run is one setting of a grid in `ablations.yaml` at one seed and the study's training budget. It
trains and evaluates through the same stage scripts `dvc repro` runs (`stages/train.py`,
`stages/evaluate.py`), into its own folder, and ends as one plain JSON record that git can hold
(`reports/ablations/runs/<name>-<key>.json`), so a study survives an interrupted session and a new
machine. `frcnn ablate` skips every run whose key is already recorded.

A run's key is a SHA-256 of everything that decides its numbers, not of where it sits in a grid:
  - the full params (params.yaml + the setting + the seed + the budget);
  - the data: a digest of every file of the training and the test split;
  - the code, as numbers: a fingerprint of what the code computes for exactly these params (the
    losses of a few training steps on four training images and the detections after them, in the
    run's own precision). An edit that changes no number keeps the records valid; one that changes
    any number for a setting gives that setting a new key. The git commit and a digest of the
    package's source are recorded beside the key, for the audit, not in it;
  - what decides bit-level results besides: torch's version, the thread count, the effective
    training precision, and the CPU (model and instruction set).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from frcnn.config import Config, config_from_dict, flatten
from frcnn.errors import ConfigError
from frcnn.fileio import atomic_write_json, atomic_write_text

# Keys a run of the study may not vary: the data stages would have to rerun (`dvc exp run` does
# that; this runner reuses the workspace's data), and pretraining is a stage of its own.
_FIXED_PREFIXES = ("data.", "augment.", "pretrain.")
FINGERPRINT_STEPS = 3
FINGERPRINT_IMAGES = 4


@dataclass(frozen=True)
class StudyRun:
    """One (setting, seed) of a grid at the study's budget."""

    group: str                  # the grid it was planned from
    setting: dict[str, Any]     # the grid's overrides, without seed and budget
    seed: int
    params: dict[str, Any]      # the full config it trains with
    name: str                   # `<group>-<setting slug>-s<seed>`: the MLflow run / DVC experiment
    is_baseline: bool = False   # the setting changes nothing of params.yaml
    extra: dict[str, Any] = field(default_factory=dict)  # the study-wide overrides (the budget)

    def overrides(self) -> dict[str, Any]:
        return {**self.setting, **self.extra, "seed": self.seed}

    def dvc_command(self) -> str:
        """The same run as a DVC experiment (what a user reruns it with)."""
        parts = ["dvc", "exp", "run", "-n", self.name]
        for key, value in self.overrides().items():
            parts += ["-S", f"{key}={yaml_value(value)}"]
        return " ".join(parts)


def yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S key=<value>` and `--set` read it: flow YAML without spaces."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip().replace(" ", "")


def _slug(setting: dict[str, Any]) -> str:
    """{anchors.unit: px, anchors.scales: [64, 128]} -> "px_64_128" (no "-": the group is what
    comes before the last two dashes of a run name)."""
    if not setting:
        return "default"
    text = "_".join(yaml_value(v) for v in setting.values())
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "default"


def plan_study(grids: dict[str, list[dict[str, Any]]], base: dict[str, Any], grid: str | None,
               seeds: int, extra: dict[str, Any] | None = None) -> list[StudyRun]:
    """The runs of one grid (or all), baseline first, each setting once per seed 0..seeds-1.

    A setting equal to the baseline (params.yaml + `extra`) is the same run in every grid: it is
    planned once, as group "baseline"."""
    if grid is not None and grid not in grids:
        raise ConfigError(f"--grid {grid}: unknown grid (known: {', '.join(grids)})")
    extra = dict(extra or {})
    for key in [*extra, *(k for g in grids.values() for s in g for k in s)]:
        if key.startswith(_FIXED_PREFIXES) or key == "seed":
            raise ConfigError(f"{key}: a study run reuses the workspace's data and seeds itself; "
                              f"vary {key.split('.')[0]} with `dvc exp run -S {key}=...` instead")
    base_cfg = config_from_dict(base, extra).to_dict()
    runs: dict[str, StudyRun] = {}
    for seed in range(seeds):
        runs[f"baseline-s{seed}"] = StudyRun("baseline", {}, seed, {**base_cfg, "seed": seed},
                                             f"baseline-default-s{seed}", True, extra)
    for name in [grid] if grid else list(grids):
        for setting in grids[name]:
            params = config_from_dict(base, {**extra, **setting}).to_dict()
            if params == base_cfg:
                continue  # the baseline, already planned
            for seed in range(seeds):
                run = StudyRun(name, dict(setting), seed, {**params, "seed": seed},
                               f"{name}-{_slug(setting)}-s{seed}", False, extra)
                runs.setdefault(run.name, run)
    return list(runs.values())


# ------------------------------------------------------------------ what decides the numbers


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def environment(cfg: Config) -> dict[str, Any]:
    """What decides a run's bits besides params, data and code."""
    import torch

    from frcnn.engine.device import autocast_dtype, select_device

    dtype = autocast_dtype(select_device(cfg.train.device), cfg.train.amp,
                           cfg.train.amp_dtype)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "train_precision": str(dtype).removeprefix("torch.") if dtype else "float32",
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": select_device(cfg.train.device).type}


def data_digest(splits: Iterable[Path]) -> str:
    """SHA-256 over each split's COCO JSON and every image it names (paths relative to it)."""
    h = hashlib.sha256()
    for split in splits:
        split = Path(split)
        raw = split.read_bytes()
        h.update(raw)
        for image in json.loads(raw)["images"]:
            h.update((split.parent / image["file_name"]).read_bytes())
    return h.hexdigest()


def source_digest() -> str:
    """SHA-256 of the frcnn package's .py files (recorded for the audit, not keyed on)."""
    import frcnn

    root = Path(frcnn.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def fingerprint(cfg: Config, train_json: Path, test_json: Path) -> str:
    """What the code computes for `cfg`: SHA-256 of the losses of `FINGERPRINT_STEPS` training
    steps (batch 2, the loop, schedule, flips and precision of `frcnn.engine.trainer.train`) on the
    first training images, and of the detections after them on the first test images."""
    import dataclasses

    import torch

    from frcnn.data.dataset import DetectionDataset, collate_fn
    from frcnn.engine.device import seed_everything
    from frcnn.engine.inference import predict
    from frcnn.engine.trainer import train
    from frcnn.model.build import build_model

    small = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, max_steps=FINGERPRINT_STEPS, batch_size=2, log_every=1,
        checkpoint_every=FINGERPRINT_STEPS, num_workers=0))
    seed_everything(cfg.seed)
    full = DetectionDataset(train_json, train=True)
    model = build_model(small, num_classes=cfg.model.num_classes or full.num_classes)
    subset = torch.utils.data.Subset(full, range(min(FINGERPRINT_IMAGES, len(full))))
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, subset, collate_fn, small, Path(tmp) / "model.pt", progress=False)
    for row in result.history:
        h.update(json.dumps({k: v for k, v in row.items() if k != "images_per_s"},
                            sort_keys=True).encode())
    test = DetectionDataset(test_json, train=False, include_difficult=True)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(test, range(min(FINGERPRINT_IMAGES, len(test)))),
        batch_size=2, collate_fn=collate_fn)
    for _, _, det in predict(model, loader, torch.device("cpu"), progress=False):
        for key in sorted(det):
            h.update(key.encode() + det[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` as the code reads them: every key (a record made before a key existed gets its
    default, which reproduces the behaviour from before it) and automatic values resolved
    (`model.frozen_bn: null` -> frozen exactly when pretrained). Raises ConfigError for params
    this code no longer reads."""
    from frcnn.model.build import frozen_bn

    cfg = config_from_dict(params)
    out = cfg.to_dict()
    out["model"]["frozen_bn"] = frozen_bn(cfg)
    return out


def run_key(params: dict[str, Any], data_digest: str, code_fingerprint: str,
            env: dict[str, Any]) -> str:
    """The content key of a run: its canonical params, data, numerics fingerprint, environment."""
    # what is only logged (tracking.*) does not change what a run computes
    numeric = {k: v for k, v in canonical_params(params).items() if k != "tracking"}
    payload = {"params": numeric, "data": data_digest, "code": code_fingerprint,
               "env": {k: env[k] for k in ("torch", "threads", "train_precision", "cpu",
                                           "cpu_capability", "device")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ records


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every record under `folder` (`*.json`), sorted by name; a broken one is an error naming it."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a study record ({exc})") from None
        if not isinstance(rec, dict) or not {"key", "params", "metrics"} <= set(rec):
            raise ConfigError(f"{path}: not a study record (needs key, params, metrics)")
        rec["_path"] = str(path)
        out.append(rec)
    return out


def record_path(folder: Path, run: StudyRun, key: str) -> Path:
    return Path(folder) / f"{run.name}-{key[:12]}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, {k: v for k, v in record.items() if not k.startswith("_")},
                      sort_keys=True, indent=1)


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "frcnn", "stages"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
        return out + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------ running


@dataclass(frozen=True)
class StudyPaths:
    project: Path          # the repository root (stages/ lives here)
    train_json: Path
    test_json: Path
    backbone: Path
    records: Path          # reports/ablations/runs
    workdir: Path          # run folders: checkpoints, detections (not committed)


def _stage(paths: StudyPaths, run_dir: Path, script: str, args: list[str], run: StudyRun,
           extra_env: dict[str, str] | None = None) -> None:
    env = {**os.environ, "DVC_EXP_NAME": run.name, "FRCNN_ABLATION_GROUP": run.group,
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **(extra_env or {})}
    log = run_dir / "log.txt"
    with log.open("a") as out:
        proc = subprocess.run([sys.executable, str(paths.project / "stages" / script),
                               "--params", str(run_dir / "params.yaml"), *args],
                              cwd=paths.project, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{run.name}: {script} failed ({tail[0]}); log: {log}")


def execute(run: StudyRun, key: str, paths: StudyPaths) -> Path:
    """Train and evaluate `run` in `<workdir>/<name>-<key>/` through the stage scripts; resumes a
    run interrupted mid-training (same key: same params and code). Returns the run folder."""
    run_dir = paths.workdir / f"{run.name}-{key[:12]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "params.yaml", yaml.safe_dump(run.params, sort_keys=False))
    ckpt = run_dir / "model.pt"
    _stage(paths, run_dir, "train.py",
           ["--auto-resume", "--data", str(paths.train_json), "--backbone", str(paths.backbone),
            "--checkpoint", str(ckpt), "--reports", str(run_dir / "train")], run)
    _stage(paths, run_dir, "evaluate.py",
           ["--checkpoint", str(ckpt), "--test", str(paths.test_json),
            "--reports", str(run_dir / "eval"), "--detections", str(run_dir / "detections.json")],
           run)
    return run_dir


def new_record(run: StudyRun, key: str, run_dir: Path, *, fp: str, data: str,
               env: dict[str, Any], project: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    train = json.loads((run_dir / "train" / "summary.json").read_text())
    return {"key": key, "name": run.name, "group": run.group, "setting": run.setting,
            "seed": run.seed, "baseline": run.is_baseline, "budget_steps": run.params["train"]["max_steps"],
            "params": run.params, "metrics": metrics, "train": train,
            "fingerprint": fp, "data_digest": data, "environment": env,
            "commit": _git_commit(project), "source_digest": source_digest(),
            "dvc_command": run.dvc_command(),
            "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def run_study(runs: list[StudyRun], paths: StudyPaths, *,
              analyse: Callable[[StudyRun, Path, dict[str, Any]], dict[str, Any]] | None = None,
              echo: Callable[[str], None] = print) -> list[Path]:
    """Run every planned run whose key has no record yet; write each record as it finishes."""
    data = data_digest([paths.train_json, paths.test_json])
    known = {}
    for rec in load_records(paths.records):
        # keys recomputed from the record's content: a record made by an older commit, with
        # fewer params (new ones at their neutral defaults), is still this run
        try:
            known[run_key(rec["params"], rec.get("data_digest", ""), rec.get("fingerprint", ""),
                          rec.get("environment") or {})] = rec
        except (ConfigError, KeyError):
            continue  # params of a knob this code no longer has: never this code's run
    written = []
    for i, run in enumerate(runs, 1):
        cfg = config_from_dict(run.params)
        env = environment(cfg)
        fp = fingerprint(cfg, paths.train_json, paths.test_json)
        key = run_key(run.params, data, fp, env)
        if key in known:
            echo(f"[{i}/{len(runs)}] {run.name}: recorded ({Path(known[key]['_path']).name}), skipped")
            continue
        echo(f"[{i}/{len(runs)}] {run.name}: key {key[:12]}, training ({run.dvc_command()})")
        run_dir = execute(run, key, paths)
        record = new_record(run, key, run_dir, fp=fp, data=data, env=env, project=paths.project)
        if analyse is not None:
            record.update(analyse(run, run_dir, record))
        path = record_path(paths.records, run, key)
        write_record(path, record)
        known[key] = {**record, "_path": str(path)}
        written.append(path)
        echo(f"[{i}/{len(runs)}] {run.name}: mAP {record['metrics']['map']:.4f} "
             f"AP50 {record['metrics']['ap50']:.4f} -> {path}")
    return written


def flat_setting(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(params).items() if k != "seed"}


# ------------------------------------------------------------------ analysis of a finished run


def proposal_recall(checkpoint: Path, test_json: Path, top_n: int = 300,
                    ious: tuple[float, ...] = (0.5, 0.7)) -> dict[str, Any]:
    """The RPN's recall of the non-difficult test GT by its best `top_n` proposals per image."""
    import torch
    from torchvision.ops import box_iou

    from frcnn.data.dataset import DetectionDataset
    from frcnn.engine.inference import load_detector, rpn_proposals

    model, _ = load_detector(checkpoint)
    dataset = DetectionDataset(test_json, train=False, include_difficult=True)
    hits, total, kept = dict.fromkeys(ious, 0), 0, 0
    for i in range(len(dataset)):
        image, target = dataset[i]
        props = rpn_proposals(model, [image])[0][:top_n]
        kept += len(props)
        gt = target["boxes"][~target["difficult"]]
        total += len(gt)
        if len(gt) and len(props):
            best = box_iou(gt, props.to(torch.float32)).max(dim=1).values
            for t in ious:
                hits[t] += int((best >= t).sum())
    out: dict[str, Any] = {f"recall@{t:g}": hits[t] / max(total, 1) for t in ious}
    return {**out, "top_n": top_n, "num_gt": total,
            "proposals_per_image": kept / max(len(dataset), 1)}


def analyse(run: StudyRun, run_dir: Path, paths: StudyPaths,
            test_only: dict[str, list[Any]]) -> dict[str, Any]:
    """TIDE errors and RPN recall of a finished run; for a baseline run also the inference-only
    knobs of `test_only`, each value re-evaluated on its checkpoint (no retraining)."""
    from frcnn.evaluation.errors import tide_breakdown
    from frcnn.pipeline.evaluate import detect, score

    gt = json.loads(paths.test_json.read_text())
    dets = json.loads((run_dir / "detections.json").read_text())
    ckpt = run_dir / "model.pt"
    out: dict[str, Any] = {"errors": tide_breakdown(gt, dets),
                           "rpn_recall": proposal_recall(ckpt, paths.test_json)}
    if run.is_baseline and test_only:
        rows = []
        for key, values in test_only.items():
            for value in values:
                cfg = config_from_dict(run.params, {key: value})
                results, *_ = detect(cfg, paths.test_json, ckpt)
                metrics, _, _ = score(gt, results)
                rows.append({"key": key, "value": value, "metrics": metrics,
                             "errors": tide_breakdown(gt, results)})
        out["test_only"] = rows
    return out


def load_study_file(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[Any]]]:
    """ablations.yaml -> (grids, test_only knobs); checked against the config."""
    from frcnn.tools.ablation import load_grids

    grids = load_grids(path)
    raw = yaml.safe_load(Path(path).read_text()) or {}
    test_only = raw.get("test_only") or {}
    if not isinstance(test_only, dict) or not all(isinstance(v, list) for v in test_only.values()):
        raise ConfigError(f"{path}: test_only must map a params key to a list of values")
    from frcnn.engine.inference import INFERENCE_ROI_KEYS, INFERENCE_RPN_KEYS

    allowed = {f"rpn.{k}" for k in INFERENCE_RPN_KEYS} | {f"roi.{k}" for k in INFERENCE_ROI_KEYS}
    for key, values in test_only.items():
        if key not in allowed:
            raise ConfigError(f"{path}: test_only.{key}: not an inference-only key "
                              f"(those are {', '.join(sorted(allowed))})")
        for v in values:
            try:
                config_from_dict({}, {key: v})
            except ConfigError as exc:
                raise ConfigError(f"{path}: test_only: {exc}") from None
    return grids, test_only


# ------------------------------------------------------------------ timing, apart from the runs


def time_settings(runs: list[StudyRun], paths: StudyPaths, base: dict[str, Any], steps: int = 100,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train each distinct setting (seed 0) for `steps` steps, one at a time, through the train
    stage, and keep its step time and images/s: the study's time columns. Meant for a quiet
    machine; the study runs themselves may share it with other work, so their times mean nothing.
    MLflow goes to a throw-away store."""
    from frcnn.tools.ablation import setting_label, timing_key

    out: dict[str, Any] = {"steps": steps, "settings": {}}
    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            key = timing_key(base, run.extra, run.setting)
            if run.seed != 0 or key in seen:
                continue
            seen.add(key)
            timed = StudyRun(run.group, run.setting, 0,
                             config_from_dict(run.params, {"train.max_steps": steps}).to_dict(),
                             f"timing-{run.name}", run.is_baseline, run.extra)
            run_dir = Path(tmp) / timed.name
            run_dir.mkdir()
            atomic_write_text(run_dir / "params.yaml", yaml.safe_dump(timed.params, sort_keys=False))
            env_uri = {"MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'timing.db'}"}
            _stage(paths, run_dir, "train.py",
                   ["--data", str(paths.train_json), "--backbone", str(paths.backbone),
                    "--checkpoint", str(run_dir / "model.pt"), "--reports", str(run_dir / "train")],
                   timed, extra_env=env_uri)
            summary = json.loads((run_dir / "train" / "summary.json").read_text())
            row = {"setting": setting_label(run.setting) if not run.is_baseline else "baseline",
                   "step_seconds": summary["train_seconds"] / max(summary["steps"], 1),
                   "images_per_s": summary["images_per_s"]}
            out["settings"][key] = row
            echo(f"timing {row['setting']}: {row['step_seconds']:.3f} s/step, "
                 f"{row['images_per_s']:.1f} img/s")
    cfg = config_from_dict(base)
    out.update({"environment": environment(cfg), "commit": _git_commit(paths.project),
                "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return out
