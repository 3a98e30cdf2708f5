"""The two stages' losses, as free functions.

RPN (Ren et al. eq. 1):  L = L_cls + lambda * L_reg
  L_cls = mean binary cross-entropy over the S sampled anchors (S = N_cls, 256 per image);
  L_reg = sum over the positive sampled anchors of smooth-L1(t - t*) (summed over the 4 deltas),
          divided by S as well.
  The paper divides L_reg by the number of anchor locations (~2400) and sets lambda = 10, which
  weighs the terms about equally; dividing by S (torchvision's choice) keeps the balance
  independent of the image size. `loss.lambda` (default 5, the reference design's) then scales
  the regression on top of that.
Second stage (Fast R-CNN):  L = L_cls + roi_lambda * L_reg
  L_cls = mean cross-entropy over the R sampled RoIs (K+1 classes, 0 = background);
  L_reg = sum over foreground RoIs of smooth-L1 on the deltas of their GT class only (or on the one
          class-agnostic set, `roi.class_agnostic_box`), divided by R.

smooth-L1 with `beta`: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta (beta = 1 is the formula in
the reference design; 1/9 is the paper's code, which makes small errors count more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rpn_loss(objectness: Tensor, pred_deltas: Tensor, labels: Tensor, target_deltas: Tensor,
             lambda_: float, beta: float) -> tuple[Tensor, Tensor]:
    """Losses over the S sampled anchors of a batch.

    objectness (S,) logits, pred_deltas (S, 4), labels (S,) in {0, 1}, target_deltas (S, 4)
    -> (L_cls, lambda * L_reg), both scalars.
    """
    num_sampled = max(labels.numel(), 1)
    cls = F.binary_cross_entropy_with_logits(objectness, labels.to(objectness.dtype),
                                             reduction="sum") / num_sampled
    pos = labels == 1
    reg = F.smooth_l1_loss(pred_deltas[pos], target_deltas[pos], beta=beta,
                           reduction="sum") / num_sampled
    return cls, lambda_ * reg


def fast_rcnn_loss(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, target_deltas: Tensor,
                   lambda_: float, beta: float) -> tuple[Tensor, Tensor]:
    """Losses over the R sampled RoIs of a batch.

    class_logits (R, K+1), box_deltas (R, 4*(K+1)) per-class or (R, 4) class-agnostic,
    labels (R,) in 0..K, target_deltas (R, 4) -> (L_cls, lambda * L_reg).
    """
    num_rois = max(labels.numel(), 1)
    cls = F.cross_entropy(class_logits, labels, reduction="sum") / num_rois
    fg = torch.where(labels > 0)[0]
    # only the regressor of the RoI's own class is trained: the other K-1 outputs get no gradient
    per_class = box_deltas.reshape(box_deltas.shape[0], -1, 4)
    pred = per_class[fg, labels[fg] if per_class.shape[1] > 1 else 0]
    reg = F.smooth_l1_loss(pred, target_deltas[fg], beta=beta, reduction="sum") / num_rois
    return cls, lambda_ * reg
