"""The detector: transform -> backbone -> RPN -> RoI heads -> boxes in the input image's pixels.

Calling convention (torchvision's):
    model.train(); losses = model(images, targets)   # dict of 4 named scalar losses
    model.eval();  detections = model(images)         # [{"boxes", "labels", "scores"}] per image
images: list of Tensor[3, H, W] float in [0, 1], any sizes; targets: list of {"boxes": (G, 4) xyxy
float in the image's pixels, "labels": (G,) int64 in 1..K}. K = `num_classes`, background excluded.
"""

from __future__ import annotations

from torch import Tensor, nn

from frcnn.model.roi_heads import RoIHeads
from frcnn.model.rpn import RegionProposalNetwork
from frcnn.model.transform import ImageTransform, validate_inputs


class FasterRCNN(nn.Module):
    def __init__(self, transform: ImageTransform, backbone: nn.Module, rpn: RegionProposalNetwork,
                 roi_heads: RoIHeads, num_classes: int) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        validate_inputs(images, targets, self.num_classes)
        if self.training and targets is None:
            raise ValueError("targets: required in training mode (call model.eval() to detect)")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(features, sizes, targets)
        detections, roi_losses = self.roi_heads(features, proposals, sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, sizes, original_sizes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["FasterRCNN", "count_parameters"]
