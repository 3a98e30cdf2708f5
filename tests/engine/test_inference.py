"""A checkpoint as a detector: `load_detector`, `predict_files` and `frcnn predict` on a folder
with good and corrupt images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.tiny_project import tiny_params
from typer.testing import CliRunner

from frcnn.cli import app
from frcnn.config import config_from_dict
from frcnn.engine.checkpoint import save_checkpoint
from frcnn.engine.inference import load_detector
from frcnn.errors import CheckpointError
from frcnn.model.build import build_model
from frcnn.pipeline.predict import predict_files

CLASSES = ["disc", "square"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint laid out as engine.train writes it (an untrained tiny model)."""
    cfg = config_from_dict(tiny_params())
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "models" / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "step": 2, "config": cfg.to_dict(),
                           "history": [], "num_classes": len(CLASSES), "class_names": CLASSES,
                           "mlflow_run_id": ""})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two readable images (an RGBA PNG, a grayscale JPEG), a corrupt .jpg, and a text file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 4), dtype=np.uint8), "RGBA").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (72, 64), dtype=np.uint8), "L").save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_load_detector_restores_the_weights_in_eval_mode(checkpoint: Path) -> None:
    model, names = load_detector(checkpoint)
    assert names == CLASSES and not model.training
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_load_detector_names_a_missing_or_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_detector(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: not a frcnn checkpoint \(no model, config"):
        load_detector(tmp_path / "other.pt")


def test_predict_files_writes_json_and_png_per_image_and_reports_the_corrupt_one(
        checkpoint: Path, images: Path, tmp_path: Path) -> None:
    model, names = load_detector(checkpoint)
    everything, _, _ = predict_files(model, names, [images], tmp_path / "all", conf=0.0)
    scores = sorted(d["score"] for p in everything for d in json.loads(p.read_text())["detections"])
    assert scores, "the untrained tiny model (roi.score_thresh 0) should output something"
    # between two distinct (rounded) scores near the median: keeps about half, unambiguously
    gaps = [i for i in range(1, len(scores)) if scores[i] - scores[i - 1] > 2e-4]
    assert gaps, scores
    i = min(gaps, key=lambda j: abs(j - len(scores) / 2))
    conf = (scores[i - 1] + scores[i]) / 2

    out = tmp_path / "pred"
    written, errors, notes = predict_files(model, names, [images], out, conf=conf)
    assert [p.name for p in written] == ["a.json", "b.json"] and notes == []
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "unreadable image" in errors[0]
    kept = 0
    for path, (w, h) in zip(written, ((80, 64), (64, 72))):
        record = json.loads(path.read_text())
        assert set(record) == {"image", "width", "height", "detections"}
        assert Path(record["image"]).name == path.stem + (".png" if path.stem == "a" else ".jpg")
        assert (record["width"], record["height"]) == (w, h)
        for det in record["detections"]:
            assert set(det) == {"label", "class", "score", "box"}
            assert det["label"] in (1, 2) and det["class"] == names[det["label"] - 1]
            assert conf <= det["score"] <= 1.0
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        kept += len(record["detections"])
    assert kept == len(scores) - i  # exactly the detections scoring >= conf
    with Image.open(out / "a.png") as im:
        assert im.size[0] > 0
    assert not list(out.glob("*.tmp"))


def test_images_with_the_same_stem_do_not_overwrite_each_other(checkpoint: Path, tmp_path: Path
                                                               ) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    for path in (src / "p.png", src / "p.jpg", src / "x" / "p.png"):
        Image.new("RGB", (64, 64), (120, 30, 200)).save(path)
    model, names = load_detector(checkpoint)
    written, errors, notes = predict_files(model, names, [src], tmp_path / "out", conf=0.0)
    assert errors == [] and notes == []
    assert [p.name for p in written] == ["p.json", "p-2.json", "p-3.json"]
    assert sorted(Path(json.loads(p.read_text())["image"]).relative_to(src).as_posix()
                  for p in written) == ["p.jpg", "p.png", "x/p.png"]
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_predict_command_skips_unreadable_files(checkpoint: Path, images: Path, tmp_path: Path
                                                ) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(images), str(tmp_path / "missing.png"),
                                 "--checkpoint", str(checkpoint), "--conf", "0.2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2
    assert "broken.jpg" in skipped[0] and "missing.png" in skipped[1]
    assert result.stdout == f"2 image(s) -> {out}/ (2 skipped)\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    for path in out.glob("*.json"):
        assert all(d["score"] >= 0.2 for d in json.loads(path.read_text())["detections"])


def test_predict_command_fails_when_nothing_is_readable(checkpoint: Path, images: Path,
                                                        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(images / "broken.jpg"), "--checkpoint",
                                      str(checkpoint), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.startswith("skipped: ") and "broken.jpg" in result.stderr
    assert "0 image(s)" in result.stdout and "(1 skipped)" in result.stdout


def test_predict_command_with_a_missing_checkpoint_exits_2(images: Path, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "none.pt"
    result = CliRunner().invoke(app, ["predict", str(images), "--checkpoint", str(missing),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: checkpoint not found\n"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- never writing over a file


def photo(path: Path, colour: tuple[int, int, int] = (120, 30, 200)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path)
    return path.read_bytes()


def predict_cli(checkpoint: Path, *args: str):
    result = CliRunner().invoke(app, ["predict", *args, "--checkpoint", str(checkpoint),
                                      "--conf", "0.0"])
    assert result.exit_code == 0, result.output
    return result


def test_predict_into_the_input_folder_never_overwrites_an_input(checkpoint: Path, tmp_path: Path
                                                                  ) -> None:
    d = tmp_path / "d"
    original = photo(d / "photo.png")
    result = predict_cli(checkpoint, str(d), "--out", str(d))
    assert (d / "photo.png").read_bytes() == original
    assert sorted(p.name for p in d.iterdir()) == ["photo-2.json", "photo-2.png", "photo.png"]
    assert result.stderr == (f"renamed: {d / 'photo.png'} is an input, not overwritten: "
                             f"{d / 'photo.png'}'s detections go to {d / 'photo-2'}.json and .png\n")
    assert json.loads((d / "photo-2.json").read_text())["image"] == str(d / "photo.png")
    with Image.open(d / "photo-2.png") as im:
        assert im.size != (64, 48)  # the drawn figure, not a copy of the photo
    figure = (d / "photo-2.png").read_bytes()

    # rerun: its own figure is not taken for a photo, the same names are reused, nothing grows
    again = predict_cli(checkpoint, str(d), "--out", str(d))
    assert again.stdout == f"1 image(s) -> {d}/ (0 skipped)\n"
    assert (d / "photo.png").read_bytes() == original
    assert sorted(p.name for p in d.iterdir()) == ["photo-2.json", "photo-2.png", "photo.png"]
    assert (d / "photo-2.png").read_bytes() == figure


def test_an_input_given_by_name_or_reached_through_a_symlink_is_not_overwritten(
        checkpoint: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    a, b = photo(src / "a.png"), photo(src / "b.png", (10, 200, 10))
    out.mkdir()
    (out / "b.png").symlink_to(src / "b.png")  # out/b.png *is* the input src/b.png
    result = predict_cli(checkpoint, str(src / "a.png"), str(src / "b.png"), str(out / "b.png"),
                         "--out", str(src))
    assert (src / "a.png").read_bytes() == a and (src / "b.png").read_bytes() == b
    assert sorted(p.name for p in src.iterdir()) == ["a-2.json", "a-2.png", "a.png", "b-2.json",
                                                     "b-2.png", "b-3.json", "b-3.png", "b.png"]
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("renamed: ") for line in lines)
    assert f"{src / 'b.png'} is an input" in lines[2] and f"{out / 'b.png'}'s detections" in lines[2]

    predict_cli(checkpoint, str(src / "b.png"), "--out", str(out))
    assert (out / "b.png").is_symlink() and (src / "b.png").read_bytes() == b
    assert sorted(p.name for p in out.iterdir()) == ["b-2.json", "b-2.png", "b.png"]


def test_a_users_file_in_the_output_folder_survives(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    mine = photo(out / "x.png", (0, 0, 0))  # the user's own picture, no predict output
    photo(tmp_path / "src" / "x.png")
    photo(tmp_path / "other" / "x.png")
    result = predict_cli(checkpoint, str(tmp_path / "src"), "--out", str(out))
    assert (out / "x.png").read_bytes() == mine
    assert sorted(p.name for p in out.iterdir()) == ["x-2.json", "x-2.png", "x.png"]
    assert result.stderr == (f"renamed: {out / 'x.png'} exists and is not predict's output for "
                             f"{tmp_path / 'src' / 'x.png'}, not overwritten: "
                             f"{tmp_path / 'src' / 'x.png'}'s detections go to {out / 'x-2'}.json "
                             "and .png\n")
    # predict's own outputs for the same input are replaced; another input's are not
    (out / "x-2.json").write_text(json.dumps({"image": str(tmp_path / "src" / "x.png")}))
    rerun = predict_cli(checkpoint, str(tmp_path / "src"), "--out", str(out))
    assert len(json.loads((out / "x-2.json").read_text())["detections"]) > 0
    other = predict_cli(checkpoint, str(tmp_path / "other"), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["x-2.json", "x-2.png", "x-3.json", "x-3.png",
                                                     "x.png"]
    assert json.loads((out / "x-2.json").read_text())["image"] == str(tmp_path / "src" / "x.png")
    assert "renamed: " in rerun.stderr and rerun.stderr.count("\n") == 1
    assert other.stderr.count("renamed: ") == 1 and "x-3" in other.stderr


def test_predict_takes_the_inference_keys_from_set(checkpoint: Path, images: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the checkpoint's settings, then --set
    runner = CliRunner()
    counts = {}
    for limit in ("100", "1"):
        out = tmp_path / f"out{limit}"
        result = runner.invoke(app, ["predict", str(images / "a.png"), "--checkpoint", str(checkpoint),
                                     "--conf", "0", "--out", str(out),
                                     "--set", f"roi.detections_per_img={limit}"])
        assert result.exit_code == 0, result.output
        counts[limit] = len(json.loads((out / "a.json").read_text())["detections"])
    assert counts["1"] == 1 < counts["100"]
    bad = runner.invoke(app, ["predict", str(images / "a.png"), "--checkpoint", str(checkpoint),
                              "--set", "roi.score_thresh=2"])
    assert bad.exit_code == 2 and "roi.score_thresh" in bad.stderr
