"""`frcnn export`: the batched graph equals the PyTorch detector, as a torch.export program and as
ONNX under onnxruntime, at several image sizes and batch sizes; `frcnn predict --model x.onnx`
writes predict's outputs without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from frcnn.cli import app
from frcnn.config import config_from_dict
from frcnn.deploy.export import ExportableDetector, export_onnx, first_per_group
from frcnn.engine.checkpoint import save_checkpoint
from frcnn.engine.inference import load_detector
from frcnn.model.build import build_model
from tests.tiny_project import tiny_params

CLASSES = ["disc", "square"]
# (batch, height, width): square, landscape, portrait, a size the model upsamples
SHAPES = [(1, 64, 64), (2, 64, 80), (3, 90, 50), (1, 40, 130)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params()
    params["roi"]["score_thresh"] = 0.05  # fewer near-tied detections of an untrained model
    cfg = config_from_dict(params)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=len(CLASSES))
    with torch.no_grad():  # confident, distinct scores: a parity test should not rest on ties
        model.roi_heads.predictor.cls_score.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "step": 2, "config": cfg.to_dict(),
                           "history": [], "num_classes": 2, "class_names": CLASSES,
                           "mlflow_run_id": ""})
    return path


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path) -> Path:
    model, names = load_detector(checkpoint)
    return export_onnx(model, names, checkpoint.with_suffix(".onnx"))


def batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed + 7 * h + w))


def assert_matches(outputs, reference: list[dict[str, torch.Tensor]], atol_box: float) -> None:
    boxes, scores, labels, counts = (torch.as_tensor(np.asarray(o)) for o in outputs)
    assert counts.tolist() == [len(r["boxes"]) for r in reference]
    assert counts.sum() > 0
    for i, ref in enumerate(reference):
        k = int(counts[i])
        torch.testing.assert_close(boxes[i, :k], ref["boxes"], atol=atol_box, rtol=0)
        torch.testing.assert_close(scores[i, :k], ref["scores"], atol=1e-5, rtol=0)
        assert torch.equal(labels[i, :k], ref["labels"])
        assert not boxes[i, k:].any() and not scores[i, k:].any()  # padding


@pytest.mark.parametrize("shape", SHAPES)
def test_the_batched_graph_equals_the_model(checkpoint: Path, shape) -> None:
    model, _ = load_detector(checkpoint)
    images = batch(*shape)
    with torch.inference_mode():
        assert_matches(ExportableDetector(model).eval()(images), model(list(images)), 1e-4)


def test_first_per_group_ranks_within_each_group_in_order() -> None:
    group = torch.tensor([1, 0, 1, 1, 0, 2])
    order, rank = first_per_group(group, 4, 2)
    assert order.tolist() == [1, 4, 0, 2, 3, 5] and rank.tolist() == [0, 1, 0, 1, 2, 0]


def test_onnx_under_onnxruntime_equals_the_model_at_every_size(checkpoint: Path,
                                                               onnx_file: Path) -> None:
    import onnxruntime as ort

    model, _ = load_detector(checkpoint)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "counts"]
    for shape in SHAPES:  # one graph: dynamic batch, height and width
        images = batch(*shape, seed=1)
        with torch.inference_mode():
            want = model(list(images))
        # ONNX Resize and torch's bilinear differ by ~1e-5: boxes agree to a hundredth of a pixel
        assert_matches(session.run(None, {"images": images.numpy()}), want, atol_box=0.01)


def test_the_torch_export_program_loads_and_equals_the_model(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the checkpoint's inference settings
    result = CliRunner().invoke(app, ["export", "--format", "torch", "--checkpoint",
                                      str(checkpoint), "--out", str(tmp_path / "m.pt2")])
    assert result.exit_code == 0, result.output
    program = torch.export.load(tmp_path / "m.pt2").module()
    model, _ = load_detector(checkpoint)
    for shape in SHAPES[1:3]:
        images = batch(*shape, seed=2)
        with torch.inference_mode():
            assert_matches(program(images), model(list(images)), 1e-4)


def test_export_refuses_a_bad_format_and_overwriting_the_checkpoint(checkpoint: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["export", "--format", "tflite", "--checkpoint", str(checkpoint)])
    assert r.exit_code == 2 and "--format tflite" in r.stderr
    r = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(checkpoint)])
    assert r.exit_code == 2 and "is the checkpoint itself" in r.stderr


def test_export_bakes_in_the_inference_keys_and_records_them(checkpoint: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "few.onnx"
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out),
                                 "--set", "roi.detections_per_img=3"])
    assert r.exit_code == 0, r.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["frcnn.inference"])["roi.detections_per_img"] == 3
    assert json.loads(meta["frcnn.class_names"]) == CLASSES
    import onnxruntime as ort

    boxes = ort.InferenceSession(str(out)).run(None, {"images": batch(2, 64, 80).numpy()})[0]
    assert boxes.shape == (2, 3, 4)


def test_predict_with_the_onnx_model_runs_without_torch_and_writes_predicts_outputs(
        checkpoint: Path, onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml: torch's predict uses the checkpoint's settings
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (64, 80)), ("b.jpg", (90, 50))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    images = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "broken.jpg"]
    script = (
        "import sys\n"
        "from frcnn.entry import main\n"
        f"sys.argv = ['frcnn', 'predict', *{[str(p) for p in images]!r}, '--model', "
        f"{str(onnx_file)!r}, '--conf', '0', '--out', {str(tmp_path / 'onnx')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('exit', code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "exit 0" in done.stdout and "skipped:" in done.stderr and "broken.jpg" in done.stderr
    r = CliRunner().invoke(app, ["predict", *map(str, images[:2]), "--checkpoint", str(checkpoint),
                                 "--conf", "0", "--out", str(tmp_path / "torch")])
    assert r.exit_code == 0, r.output
    for stem in ("a", "b"):
        got = json.loads((tmp_path / "onnx" / f"{stem}.json").read_text())
        want = json.loads((tmp_path / "torch" / f"{stem}.json").read_text())
        assert (got["height"], got["width"]) == (want["height"], want["width"])
        assert len(got["detections"]) == len(want["detections"]) > 0
        for g, w in zip(got["detections"], want["detections"]):
            assert g["class"] == w["class"] and abs(g["score"] - w["score"]) <= 1e-4
            assert max(abs(a - b) for a, b in zip(g["box"], w["box"])) <= 0.11  # 0.1 px rounding
        assert (tmp_path / "onnx" / f"{stem}.png").is_file()


def test_predict_names_a_missing_or_foreign_onnx_file(tmp_path: Path) -> None:
    from frcnn.deploy.onnx_predict import main

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main([str(img), "--model", str(tmp_path / "none.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert main([str(img), "--model", str(tmp_path / "junk.onnx")]) == 2
