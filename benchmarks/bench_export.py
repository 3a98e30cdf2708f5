"""The exported graph against the model it came from: our default-recipe detector exported to
ONNX (`frcnn export`) and run by onnxruntime, against the same weights in PyTorch (float32, as
`frcnn evaluate`/`predict` run by default), inference at batch 1 and batch 8, through the
instrument (interleaved rounds, paired ratio with its bootstrap interval; the A/A figure here is
PyTorch against a second copy of itself). `tests/deploy/test_export.py` checks the outputs agree.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_recipe import SIZE, recipe_configs
from benchmarks.peer import SIZES, calibrate_batchnorm, make_inputs
from benchmarks.timing import emit, instrument_record, interleaved, make_infer
from frcnn.config import Config
from frcnn.model.build import build_model


def bench_export(base: Config, quick: bool, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """export_onnx_infer_b1 and export_onnx_throughput_b8 records (ours = onnxruntime)."""
    from frcnn.deploy.export import export_onnx
    from frcnn.deploy.onnx_predict import OnnxDetector

    records: list[dict[str, Any]] = []
    cfg, _ = recipe_configs(base)
    tag = {"device": "cpu", "threads": torch.get_num_threads(), "comparison": "export",
           "peer": "our PyTorch model"}
    torch.manual_seed(0)
    k = SIZES[SIZE]["num_classes"]
    model = build_model(cfg, num_classes=k)
    calibrate_batchnorm(model, make_inputs(SIZE, 2, seed=100)[0])
    model.eval()
    twin = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = OnnxDetector(export_onnx(model, [f"c{i}" for i in range(1, k + 1)],
                                        Path(tmp) / "model.onnx"), threads=torch.get_num_threads())
    label = f"{SIZE}, params.yaml, float32, onnxruntime vs PyTorch"
    for figure, n in (("export_onnx_infer_b1", 1), ("export_onnx_throughput_b8", 8)):
        images = make_inputs(SIZE, n, seed=3)[0]  # one size: the graph takes a stacked batch
        stacked = np.ascontiguousarray(torch.stack(images).numpy())
        fns = {"ours": lambda x=stacked: onnx(x), "tv": make_infer(model, images),
               "aa": make_infer(twin, images)}
        unit = "images/s" if n > 1 else "s"
        emit(records, instrument_record(figure, label, interleaved(fns, **plan), unit=unit, per=n,
                                        batch=n, **tag))
    return records
