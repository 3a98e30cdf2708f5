"""Every setting of every grid in ablations.yaml trains a few steps and detects on the tiny project,
in float32 and under bfloat16 autocast (forced: a CPU without native bf16 would otherwise fall back
to float32 and test nothing), so a grid can never again hold a setting that crashes."""

import pytest
import torch
import yaml

from frcnn.config import config_from_dict
from frcnn.data.dataset import DetectionDataset, collate_fn
from frcnn.engine import trainer
from frcnn.engine.device import seed_everything
from frcnn.engine.inference import predict
from frcnn.model.build import build_model
from frcnn.tools.study import load_study_file
from tests.tiny_project import REPO, build_project

GRIDS, TEST_ONLY = load_study_file(REPO / "ablations.yaml")
SETTINGS = [(f"{g}-{i}", s) for g, settings in GRIDS.items() for i, s in enumerate(settings)]
SETTINGS += [(f"test_only-{k}={v}", {k: v}) for k, values in TEST_ONLY.items() for v in values]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return build_project(tmp_path_factory.mktemp("grids"))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("name,setting", SETTINGS, ids=[n for n, _ in SETTINGS])
def test_every_grid_setting_trains_and_detects(project, tmp_path, monkeypatch, name, setting,
                                               precision):
    forced = torch.bfloat16 if precision == "bfloat16" else None
    monkeypatch.setattr(trainer, "autocast_dtype", lambda device, amp, dtype="auto": forced)
    cfg = config_from_dict(yaml.safe_load((project / "params.yaml").read_text()),
                           {"rpn.pre_nms_top_n_test": 2000, **setting,
                            "train.amp": precision == "bfloat16"})
    seed_everything(0)
    dataset = DetectionDataset(project / "data/augmented/trainval.json", train=True)
    model = build_model(cfg, num_classes=dataset.num_classes)
    result = trainer.train(model, dataset, collate_fn, cfg, tmp_path / "model.pt", progress=False)
    assert result.step == cfg.train.max_steps
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
    test = DetectionDataset(project / "data/processed/test.json", train=False, include_difficult=True)
    loader = torch.utils.data.DataLoader(test, batch_size=2, collate_fn=collate_fn)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=forced is not None):
        detections = [d for _, _, d in predict(model, loader, torch.device("cpu"), progress=False)]
    assert len(detections) == len(test)
    for det in detections:
        assert det["boxes"].shape[1] == 4 and torch.isfinite(det["boxes"].float()).all()
