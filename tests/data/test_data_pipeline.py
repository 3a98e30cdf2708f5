"""download -> preprocess -> augment on a tiny synth config, then loading it for training."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from torch.utils.data import DataLoader

from frcnn.config import config_from_dict
from frcnn.data.dataset import DetectionDataset, collate_fn
from frcnn.data.synth import CLASSES
from frcnn.pipeline import augment
from frcnn.pipeline import download
from frcnn.pipeline import preprocess

TINY = {"data.synth.num_trainval": 12, "data.synth.num_test": 4, "data.synth.image_size": 96,
        "augment.copies": 1, "augment.scale_jitter": 0.1}
REPO = Path(__file__).resolve().parents[2]


def test_stages_end_to_end(tmp_path):
    cfg = config_from_dict({}, TINY)
    raw, processed, augmented = tmp_path / "raw", tmp_path / "processed", tmp_path / "augmented"
    manifest = download.run(cfg, raw_dir=raw, cache_dir=tmp_path / "cache", progress=False)
    assert manifest["roots"] == ["VOCdevkit/SYNTH"]
    summary = preprocess.run(cfg, raw_dir=raw, out_dir=processed, summary_json=tmp_path / "reports" / 'data_summary.json', summary_png=tmp_path / "reports" / 'data_summary.png', preview_png=tmp_path / "reports" / 'data_preview.png', progress=False)
    assert summary["classes"] == sorted(CLASSES) and summary["issues"] == []
    assert summary["splits"]["trainval"]["images"] == 12 and summary["splits"]["test"]["images"] == 4
    augment.run(cfg, processed_dir=processed, out_dir=augmented, preview_png=tmp_path / "reports" / 'augment_preview.png', progress=False)

    train = DetectionDataset(augmented / "trainval.json", train=True, hflip=True)
    test = DetectionDataset(processed / "test.json", train=False, include_difficult=True)
    assert len(train) == 24 and len(test) == 4 and train.class_names == test.class_names
    images, targets = next(iter(DataLoader(train, batch_size=4, collate_fn=collate_fn)))
    assert all(i.shape == (3, 96, 96) for i in images) and len(targets) == 4
    n_test_objects = sum(len(test[i][1]["boxes"]) for i in range(len(test)))
    assert n_test_objects == summary["splits"]["test"]["objects"]
    for name in ("data_summary.json", "data_summary.png", "data_preview.png", "augment_preview.png"):
        assert (tmp_path / "reports" / name).is_file()


def test_stage_scripts(tmp_path):
    """`python stages/<name>.py --params ...` with the fixed paths, from a project folder."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synth"].update(num_trainval=4, num_test=2, image_size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "preprocess", "augment"):
        subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params",
                        "params.yaml"], cwd=tmp_path, check=True, capture_output=True)
    coco = json.loads((tmp_path / "data/augmented/trainval.json").read_text())
    assert len(coco["images"]) == 8
    bad = subprocess.run([sys.executable, str(REPO / "stages" / "preprocess.py"), "--params",
                          "missing.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: missing.yaml: file not found"
