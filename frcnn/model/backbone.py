"""Backbones: an image batch (N, 3, H, W) -> one feature map (N, C, H / stride, W / stride).

| name         | trunk                    | stride | C    | RoI feature head              |
|--------------|--------------------------|--------|------|-------------------------------|
| resnet18_c4  | ResNet-18 conv1..layer3  | 16     | 256  | box head from `roi.head`      |
| resnet50     | ResNet-50 conv1..layer4  | 32     | 2048 | box head from `roi.head` (the reference design) |
| resnet50_c4  | ResNet-50 conv1..layer3  | 16     | 1024 | layer4 (res5) on each RoI, then average pool (detectron2's C4) |

ImageNet weights come through torchvision's weights API when `pretrained` is true; with
`frozen_bn` BatchNorm becomes a fixed affine map (batch statistics of 2-4 detection images are
too noisy to update), with `freeze_stem` conv1 and layer1 are not trained (their generic edges
and colours transfer as they are) — both as in the paper's code and torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn.errors import UserError


@dataclass
class Backbone:
    body: nn.Module           # image batch -> feature map
    out_channels: int         # C
    stride: int               # pixels per feature cell
    res5_head: nn.Module | None  # C4 only: per-RoI layer4, output channels `res5_channels`
    res5_channels: int = 0


_SPECS = {
    # name: (torchvision constructor, weights enum name, last trunk layer, channels, stride)
    "resnet18_c4": ("resnet18", "ResNet18_Weights", "layer3", 256, 16),
    "resnet50": ("resnet50", "ResNet50_Weights", "layer4", 2048, 32),
    "resnet50_c4": ("resnet50", "ResNet50_Weights", "layer3", 1024, 16),
}


class WeightsUnavailableError(UserError, RuntimeError):
    """ImageNet weights were asked for (model.pretrained) and could not be had."""


def _load_resnet(arch: str, weights_enum: str, pretrained: bool, frozen_bn: bool) -> nn.Module:
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1 if pretrained else None
    try:
        return getattr(torchvision.models, arch)(weights=weights, norm_layer=norm_layer)
    except Exception as exc:  # no network, proxy, corrupt cache ...: say what to do
        raise WeightsUnavailableError(
            f"model.pretrained: could not get ImageNet weights for {arch} ({type(exc).__name__}: "
            f"{exc}); connect to the internet once (torchvision caches them under "
            f"~/.cache/torch) or set model.pretrained: false") from None


def build_backbone(name: str, pretrained: bool, frozen_bn: bool, freeze_stem: bool) -> Backbone:
    """Build the named backbone (see the table above)."""
    arch, weights_enum, last, channels, stride = _spec(name)
    net = _load_resnet(arch, weights_enum, pretrained, frozen_bn)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    body = nn.Sequential(*[getattr(net, n) for n in names[: names.index(last) + 1]])
    if freeze_stem:
        for module in (net.conv1, net.bn1, net.layer1):
            for p in module.parameters():
                p.requires_grad_(False)
    if name.endswith("_c4") and name.startswith("resnet50"):
        return Backbone(body, channels, stride, res5_head=net.layer4, res5_channels=2048)
    return Backbone(body, channels, stride, res5_head=None)


def _spec(name: str) -> tuple[str, str, str, int, int]:
    if name not in _SPECS:
        raise ValueError(f"model.backbone: unknown backbone {name!r} (known: {', '.join(_SPECS)})")
    return _SPECS[name]


def backbone_stride(name: str) -> int:
    """Pixels per feature cell of the named backbone, without building it."""
    return _spec(name)[4]


def backbone_channels(name: str) -> int:
    """Channels C of the named backbone's feature map, without building it."""
    return _spec(name)[3]
