"""The prepared GPU check (benchmarks/gpu_check.py) in its dry run: every part's machinery runs on
the CPU at toy sizes, so the script cannot rot before a session with a GPU runs it, and it still
passes on a machine without dvc, mlflow, pycocotools, albumentations and defusedxml (the GPU
machine has none of them)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = ["precision", "resume", "distributed", "eval_devices", "speed", "projection"]
OPTIONAL = ("dvc", "mlflow", "pycocotools", "albumentations", "defusedxml")

# Put on PYTHONPATH as sitecustomize.py: every import of those packages (top level or below)
# fails as if they were not installed, in this process and in the torchrun workers it starts.
BLOCKER = f'''
import importlib.abc
import sys

BLOCKED = {set(OPTIONAL)!r}


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)",
                                      name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
'''


def _strict(constant: str) -> None:
    raise ValueError(f"not strict JSON: {constant}")


def dry_run(out: Path, pythonpath: Path | None = None) -> tuple[dict, str, str]:
    """Run the dry run into `out`; (the JSON report, the markdown, stdout)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + "\n" + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text(), parse_constant=_strict)
    return report, (out / "gpu_check.md").read_text(), proc.stdout


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp("gpu_check"))


def test_every_part_passes_and_both_reports_are_written(dry):
    report, md, stdout = dry
    assert report["status"] == "passed" and report["meta"]["dry_run"] is True
    assert list(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] == "passed", (name, part)
        assert part["checks"] and all(c["ok"] for c in part["checks"]), name
        assert f"## {name}: passed" in md
    assert report["tolerances"]["curve_level_rel"] > 0 and "Tolerances" in md
    assert "gpu_check: passed" in stdout
    # nothing the bare GPU machine lacks (pycocotools is used when present, and torchvision's
    # datasets import defusedxml when it is installed)
    imported = set(report["meta"]["imported_packages"])
    assert {"torch", "torchvision", "numpy", "yaml"} <= imported
    assert not imported & {"dvc", "mlflow", "albumentations", "matplotlib", "pandas", "typer"}


def test_the_precisions_loss_curves_are_recorded_and_compared(dry):
    report, _, _ = dry
    part, steps = report["parts"]["precision"], report["plan"]["steps"]
    runs = part["runs"]
    # float16 with loss scaling is CUDA-only: skipped with the reason, the others ran
    assert runs["float16"]["status"] == "skipped" and "CUDA" in runs["float16"]["reason"]
    for name in ("float32", "bfloat16"):
        assert runs[name]["status"] == "passed"
        assert runs[name]["steps"] == steps and len(runs[name]["losses"]) == steps
        assert all(math.isfinite(x) for x in runs[name]["losses"])
        assert runs[name]["s_per_step"] > 0 and runs[name]["skipped_updates"] == []
    cmp = part["comparisons"]["bfloat16"]
    assert cmp["window"] == part["window"] == steps // 2
    assert 0 <= cmp["level_rel"] <= report["tolerances"]["curve_level_rel"]
    assert 0 <= cmp["step_rel"] <= report["tolerances"]["curve_step_rel"]
    assert runs["bfloat16"]["losses"] != runs["float32"]["losses"]  # really another precision


def test_resume_reaches_the_same_step_and_bit_identical_losses_on_cpu(dry):
    report, _, _ = dry
    part, steps = report["parts"]["resume"], report["plan"]["steps"]
    assert part["precision"] == "float32"
    assert part["stopped_at"] == steps // 2 and "SIGTERM" in part["interrupted"]
    assert part["steps"] == part["reference_steps"] == steps
    assert part["bit_identical"] is True
    assert part["losses_after_resume"] == part["reference_losses_after_resume"]
    assert len(part["losses_after_resume"]) == steps - steps // 2


def test_distributed_trains_under_torchrun_with_gloo(dry):
    report, _, _ = dry
    part = report["parts"]["distributed"]
    assert part["world_size"] == 2 and part["backend"] == "gloo" and part["all_reduce"] == 2
    assert part["steps"] == report["plan"]["dist_steps"] == len(part["losses"])
    assert part["weights_spread"] == 0.0


def test_evaluation_is_compared_detection_by_detection_and_by_ap(dry):
    report, _, _ = dry
    part = report["parts"]["eval_devices"]
    match = part["match"]
    assert match["detections_a"] == match["detections_b"] == match["paired"] > 0
    assert match["match_rate"] == 1.0 and match["max_box_diff_px"] == 0.0
    assert match["max_score_diff"] == 0.0
    a, b = part["ap"]["a"], part["ap"]["b"]
    for key in ("voc07_map", "voc10_map"):
        assert isinstance(a[key], float) and a[key] == b[key]
    assert part["checkpoint"] == "part 1's float32 run"


def test_speed_has_every_figure_with_its_ratio_and_spread(dry):
    report, _, _ = dry
    records = report["parts"]["speed"]["records"]
    assert [r["figure"] for r in records] == ["train_step", "infer_b1", "throughput_b8"]
    for r in records:
        assert r["ratio"] > 0 and r["ours_samples"] and r["tv_samples"]
        assert r["ratio_min"] <= r["ratio_p25"] <= r["ratio_p75"] <= r["ratio_max"]
        assert "CUDA" in r["peak_memory_mib"]["skipped"]


def test_projection_covers_every_preset_from_presets_yaml(dry):
    from frcnn.tools.presets import load_presets

    report, _, _ = dry
    presets = load_presets(REPO / "presets.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    rows = {r["preset"]: r for r in report["parts"]["projection"]["presets"]}
    assert set(rows) == set(presets)
    for name, preset in presets.items():
        cfg, row = preset.config(params), rows[name]
        t = cfg.train
        n = preset.images_per_epoch * (1 + cfg.augment.copies)
        steps = t.max_steps if t.max_steps > 0 else t.epochs * (n // t.batch_size)
        assert row["steps"] == steps and row["batch_size"] == t.batch_size
        assert row["expected_gpu_time"] == preset.expected_gpu_time
        assert row["train_hours"] == pytest.approx(steps * row["s_per_step"] / 3600)
        assert row["total_hours"] == pytest.approx(row["train_hours"] + (row["eval_hours"] or 0))
        assert row["total_hours"] > 0


def test_it_still_passes_without_the_optional_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import defusedxml"], env=env,
                           capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the blocker works

    report, md, _ = dry_run(tmp_path / "out", pythonpath=site)
    assert report["meta"]["optional_packages"] == dict.fromkeys(OPTIONAL, False)
    assert not set(report["meta"]["imported_packages"]) & set(OPTIONAL)
    assert report["status"] == "passed"
    assert all(p["status"] == "passed" for p in report["parts"].values()), report["parts"]
    # AP degrades to the project's own VOC evaluator, and says so
    ap = report["parts"]["eval_devices"]["ap"]["a"]
    assert "pycocotools" in ap["coco_skipped"] and "coco_map" not in ap
    assert isinstance(ap["voc07_map"], float)
    assert "COCO AP skipped" in md


def test_a_dry_run_without_out_writes_to_a_new_temporary_folder_not_reports():
    from benchmarks.gpu_check import output_dir

    out = output_dir(None, dry_run=True)
    try:
        assert out.is_dir() and not any(out.iterdir())
        assert Path(tempfile.gettempdir()) in out.parents
        assert REPO / "reports" not in out.parents
    finally:
        shutil.rmtree(out)
    assert output_dir(None, dry_run=False) == REPO / "reports"
    assert output_dir(Path("x"), dry_run=True) == Path("x")


def test_a_failing_part_is_recorded_in_one_line_and_the_others_still_run(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path),
         "--parts", "projection,eval_devices", "--presets", str(tmp_path / "missing.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text(), parse_constant=_strict)
    assert report["status"] == "failed" and list(report["parts"]) == ["projection", "eval_devices"]
    failed = report["parts"]["projection"]
    assert failed["status"] == "failed" and "missing.yaml" in failed["error"]
    assert "\n" not in failed["error"]
    # without part 1 the comparison still runs, on an untrained model's checkpoint
    ev = report["parts"]["eval_devices"]
    assert ev["status"] == "passed" and ev["checkpoint"].startswith("untrained")


def test_the_cuda_only_verdicts_on_made_up_runs():
    import torch

    from benchmarks.gpu_check import compare_curves, fp16_checks, match_detections

    settled = {"skipped_updates": [1, 2, 3], "final_scale": 8192.0}
    assert all(ok for _, ok in fp16_checks(settled, steps=100))
    late = {"skipped_updates": [80, 90], "final_scale": 8192.0}
    assert [ok for _, ok in fp16_checks(late, steps=100)] == [True, False, True]
    collapsed = {"skipped_updates": list(range(1, 20)), "final_scale": 2.0 ** -10}
    assert [ok for _, ok in fp16_checks(collapsed, steps=100)] == [False, True, False]

    cmp = compare_curves([1.0, 2.0, 2.0, 2.0], [9.0, 2.2, 1.8, 2.0], window=3)
    assert cmp["window"] == 3 and cmp["level_rel"] == pytest.approx(0.0)
    assert cmp["step_rel"] == pytest.approx(0.4 / 3 / 2.0)

    def dets(boxes, labels, scores):
        return {"boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels), "scores": torch.tensor(scores)}

    a = {1: dets([[0, 0, 100, 100], [50, 50, 90, 90]], [1, 2], [0.9, 0.3])}
    b = {1: dets([[0.5, 0, 100, 100], [50, 50, 90, 90], [0, 0, 10, 10]], [1, 3, 1],
                 [0.895, 0.3, 0.06])}
    m = match_detections(a, b, iou=0.9)
    # the second box has another label in b: unpaired; b's third has no partner in a
    assert (m["paired"], m["detections_a"], m["detections_b"]) == (1, 2, 3)
    assert m["match_rate"] == pytest.approx(1 / 3)
    assert m["max_box_diff_px"] == pytest.approx(0.5) and m["max_score_diff"] == pytest.approx(0.005)
