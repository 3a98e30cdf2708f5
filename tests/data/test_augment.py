"""The augment stage: the pipeline from params, aligned label fields, determinism, outputs."""

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from data_helpers import make_voc_root, write_manifest

from frcnn.config import AugmentConfig, config_from_dict
from frcnn.data.augment import augment_sample, build_pipeline
from frcnn.errors import DataError
from frcnn.pipeline import augment as augment_stage
from frcnn.pipeline import preprocess


def names(pipeline: A.Compose) -> list[str]:
    return [type(t).__name__ for t in pipeline.transforms]


def test_pipeline_follows_params():
    assert names(build_pipeline(AugmentConfig())) == ["HorizontalFlip"]
    full = build_pipeline(AugmentConfig(scale_jitter=0.2, color_jitter=0.3, random_crop_p=0.5,
                                        min_visibility=0.4))
    assert names(full) == ["RandomCropFromBorders", "Affine", "ColorJitter", "HorizontalFlip"]
    params = full.processors["bboxes"].params
    assert (params.format, params.min_visibility) == ("pascal_voc", 0.4)
    assert list(params.label_fields) == ["labels", "difficult", "truncated"]
    assert names(build_pipeline(AugmentConfig(hflip_p=0.0))) == []


def test_flip_moves_boxes_and_keeps_flags_aligned():
    pipeline = build_pipeline(AugmentConfig(hflip_p=1.0))
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = 255  # left band becomes the right band
    boxes = np.array([[0, 0, 10, 5], [30, 2, 40, 20]], np.float32)
    img, b, labels, diff, trunc = augment_sample(pipeline, image, boxes, [1, 2], [0, 1], [1, 0], 0)
    assert img[:, 30:].min() == 255 and img[:, :30].max() == 0
    np.testing.assert_allclose(b, [[30, 0, 40, 5], [0, 2, 10, 20]])  # x -> W - x
    assert (labels, diff, trunc) == ([1, 2], [0, 1], [1, 0])


def test_crop_drops_barely_visible_boxes_with_their_flags():
    pipeline = build_pipeline(AugmentConfig(hflip_p=0.0, random_crop_p=1.0, min_visibility=0.5))
    image = np.full((100, 100, 3), 128, np.uint8)
    boxes = np.array([[40, 40, 60, 60], [0, 0, 4, 100], [96, 0, 100, 100]], np.float32)
    kept_all = True
    for seed in range(20):
        img, b, labels, diff, trunc = augment_sample(pipeline, image, boxes, [1, 2, 3], [0, 1, 0],
                                                     [0, 0, 1], seed)
        h, w = img.shape[:2]
        assert len(b) == len(labels) == len(diff) == len(trunc)
        assert 1 in labels  # the centre box always survives a crop of <= 25 % per side
        for box, lab, d, t in zip(b, labels, diff, trunc):
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
            assert (d, t) == {1: (0, 0), 2: (1, 0), 3: (0, 1)}[lab]  # flags travel with boxes
        kept_all &= len(b) == 3
    assert not kept_all  # thin border boxes do get cropped away


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    make_voc_root(raw / "V", {
        "a": (64, 48, [("cat", (1, 1, 30, 30), 0), ("dog", (20, 10, 60, 45), 1)]),
        "b": (48, 64, [("dog", (5, 5, 40, 60), 0)]),
        "c": (40, 40, []),
    }, {"trainval": ["a", "b", "c"], "test": ["a"]})
    write_manifest(raw, ["V"])
    preprocess.run(config_from_dict({}), raw_dir=raw, out_dir=tmp_path / "processed", summary_json=tmp_path / "reports" / 'data_summary.json', summary_png=tmp_path / "reports" / 'data_summary.png', preview_png=tmp_path / "reports" / 'data_preview.png', progress=False)
    return tmp_path / "processed"


def augment(tmp_path: Path, processed: Path, out: str, **params):
    cfg = config_from_dict({}, {f"augment.{k}": v for k, v in params.items()})
    summary = augment_stage.run(cfg, processed_dir=processed, out_dir=tmp_path / out, preview_png=tmp_path / "reports" / 'augment_preview.png', progress=False)
    return summary, json.loads((tmp_path / out / "trainval.json").read_text())


def test_run_augment_materialises_copies(tmp_path, processed):
    params = dict(copies=2, scale_jitter=0.2, color_jitter=0.2, random_crop_p=0.5)
    summary, coco = augment(tmp_path, processed, "aug", **params)
    assert summary == {"images": 9, "originals": 3, "copies": 6, "objects": summary["objects"]}
    assert [im["augmented_from"] for im in coco["images"]] == [None, 1, 1, None, 4, 4, None, 7, 7]
    src = json.loads((processed / "trainval.json").read_text())
    assert coco["categories"] == src["categories"]
    for im in coco["images"]:
        assert (tmp_path / "aug" / im["file_name"]).is_file()  # relative to the JSON's folder
    assert src["images"][0]["file_name"] == "../raw/V/JPEGImages/a.jpg"
    assert coco["images"][0]["file_name"] == "../raw/V/JPEGImages/a.jpg"  # the original, in place
    assert len(list((tmp_path / "aug" / "images").glob("*.jpg"))) == 6
    originals = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert [a["bbox"] for a in originals] == [a["bbox"] for a in src["annotations"][:2]]
    for a in coco["annotations"]:
        im = coco["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
        assert a["iscrowd"] == a["difficult"]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    pipeline = json.loads((tmp_path / "aug" / "pipeline.json").read_text())
    assert (pipeline["seed"], pipeline["copies"]) == (0, 2)
    assert names(A.from_dict(pipeline)) == ["RandomCropFromBorders", "Affine", "ColorJitter",
                                           "HorizontalFlip"]
    assert (tmp_path / "reports" / "augment_preview.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    # Deterministic per augment.seed: same bytes again, different with another seed.
    augment(tmp_path, processed, "again", **params)
    augment(tmp_path, processed, "other", seed=1, **params)
    files = sorted(p.name for p in (tmp_path / "aug" / "images").iterdir())
    same = [(tmp_path / "aug/images" / f).read_bytes() == (tmp_path / "again/images" / f).read_bytes()
            for f in files]
    other = [(tmp_path / "aug/images" / f).read_bytes() == (tmp_path / "other/images" / f).read_bytes()
             for f in files]
    assert all(same) and not all(other)
    assert (tmp_path / "aug/trainval.json").read_text() == (tmp_path / "again/trainval.json").read_text()


def test_zero_copies_keeps_the_originals(tmp_path, processed):
    summary, coco = augment(tmp_path, processed, "aug", copies=0)
    assert summary["images"] == 3 and summary["copies"] == 0
    assert (tmp_path / "aug" / "images").is_dir()


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="trainval.json: not found; run the preprocess stage"):
        augment_stage.run(config_from_dict({}), processed_dir=tmp_path / "nope", out_dir=tmp_path / "aug", preview_png=tmp_path / "r" / 'augment_preview.png')
    assert not (tmp_path / "aug").exists()
