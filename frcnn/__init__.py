"""frcnn: Faster R-CNN (Ren et al., 2015) from first principles.

Follow one image from pixels to detections: `model/transform.py` (resize, normalise, pad) →
`model/backbone.py` (features) → `model/rpn.py` (ops/anchors.py, ops/matching.py, ops/boxes.py,
ops/losses.py) → `model/roi_heads.py` (RoIPool/RoIAlign, box head, per-class boxes) →
`model/faster_rcnn.py`; `model/build.py` maps params.yaml onto them. The layers, bottom up:
ops → model → data → engine → evaluation → plots → pipeline (one module per DVC stage) → cli.

Coordinate convention, everywhere: boxes are (N, 4) float tensors `(x1, y1, x2, y2)`, 0-based,
continuous pixel coordinates of the image as given (x2 - x1 is the width). VOC's 1-based inclusive
pixel indices (xmin, ymin, xmax, ymax) become (xmin - 1, ymin - 1, xmax, ymax).
Labels: 1..K for the K foreground classes, 0 is background.
"""

import os

# PyTorch's OpenMP threads busy-wait between parallel regions by default (libgomp spins 300k
# rounds): when anything else runs on the machine, a CPU training step gets several times slower.
# The runtime reads the policy once, when torch loads it, so it is set here, before any module of
# the package imports torch: every entry point (`frcnn ...`, `python stages/...`, each torchrun
# worker, so `dvc exp run` from a plain shell too) gets what `make` gets. A value the user set
# wins. The wait policy changes no number, only how idle threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from frcnn.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config", "build_model"]


def build_model(config: Config, num_classes: int | None = None):
    """Build the detector from a Config (see `frcnn.model.build.build_model`; imported here
    lazily, so that `import frcnn.<anything>` does not import torch and the model)."""
    from frcnn.model.build import build_model as _build

    return _build(config, num_classes=num_classes)
