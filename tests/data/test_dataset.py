"""DetectionDataset over a COCO JSON: targets, difficult handling, flip, collate, grouping."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_jpeg
from torch.utils.data import DataLoader

from frcnn.data.dataset import (
    DetectionDataset,
    GroupedBatchSampler,
    aspect_ratio_groups,
    collate_fn,
)
from frcnn.errors import DataError


@pytest.fixture
def coco_json(tmp_path: Path) -> Path:
    sizes = [(40, 30), (30, 40), (50, 20), (20, 50), (32, 32)]
    for i, (w, h) in enumerate(sizes):
        write_jpeg(tmp_path / "img" / f"{i}.jpg", w, h, seed=i)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 20], "area": 200,
         "iscrowd": 0, "difficult": 0, "truncated": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 6, 30, 20], "area": 600,
         "iscrowd": 1, "difficult": 1, "truncated": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12,
         "iscrowd": 0, "difficult": 0, "truncated": 1},
    ]
    coco = {"images": [{"id": i + 1, "file_name": f"../img/{i}.jpg", "width": w, "height": h}
                       for i, (w, h) in enumerate(sizes)],
            "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}
    path = tmp_path / "json" / "set.json"
    path.parent.mkdir()
    path.write_text(json.dumps(coco))
    return path


def test_items_and_targets(coco_json):
    ds = DetectionDataset(coco_json, train=False, include_difficult=True)
    assert len(ds) == 5 and ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[0, 0, 10, 20], [5, 6, 35, 26]]  # xywh -> xyxy
    assert target["labels"].tolist() == [2, 1] and target["difficult"].tolist() == [False, True]
    assert target["image_id"] == 1 and isinstance(target["image_id"], int)
    _, empty = ds[4]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_training_view_drops_difficult(coco_json):
    _, target = DetectionDataset(coco_json, train=True)[0]
    assert target["labels"].tolist() == [2] and target["difficult"].tolist() == [False]


def test_online_flip_mirrors_image_and_boxes(coco_json):
    plain_image, plain = DetectionDataset(coco_json, train=False)[0]
    flipping = DetectionDataset(coco_json, train=True, hflip=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        image, target = flipping[0]
        flipped = not torch.equal(image, plain_image)
        seen.add(flipped)
        if flipped:
            assert torch.equal(image, plain_image.flip(-1))
            assert target["boxes"].tolist() == [[30, 0, 40, 20]]  # x -> 40 - x
        else:
            assert torch.equal(target["boxes"], plain["boxes"])
    assert seen == {True, False}
    # No flip outside training, whatever `hflip` says.
    assert torch.equal(DetectionDataset(coco_json, train=False, hflip=True)[0][0], plain_image)


def test_collate_and_loader(coco_json):
    ds = DetectionDataset(coco_json, train=False)
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fn)))
    assert [tuple(i.shape) for i in images] == [(3, 30, 40), (3, 40, 30), (3, 20, 50)]
    assert [t["image_id"] for t in targets] == [1, 2, 3]
    assert collate_fn([]) == ([], [])


def test_aspect_ratio_grouping(coco_json):
    ds = DetectionDataset(coco_json, train=False)
    groups = aspect_ratio_groups(ds)
    assert groups == [1, 0, 1, 0, 1]  # landscape/square = 1, portrait = 0
    sampler = GroupedBatchSampler(list(range(5)), groups, batch_size=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert len(list(GroupedBatchSampler(list(range(5)), groups, 2, drop_last=True))) == 2
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_fn)
    for images, _ in loader:
        assert len({img.shape[1] > img.shape[2] for img in images}) == 1
    assert aspect_ratio_groups(ds, bins=(0.7, 1.5)) == [1, 1, 2, 0, 1]
    np.testing.assert_allclose(ds.aspect_ratio(2), 2.5)


def test_bad_inputs(tmp_path, coco_json):
    with pytest.raises(DataError, match="nope.json: not found"):
        DetectionDataset(tmp_path / "nope.json", train=True)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        DetectionDataset(tmp_path / "bad.json", train=True)
    (tmp_path / "img" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"1\.jpg: cannot read image"):
        DetectionDataset(coco_json, train=False)[1]
