"""frcnn.model.backbone: the three backbones' shapes and strides, frozen BN/stem, offline weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn.model.backbone import build_backbone


@pytest.mark.parametrize("name, channels, stride, res5", [
    ("resnet18_c4", 256, 16, False),
    ("resnet50", 2048, 32, False),
    ("resnet50_c4", 1024, 16, True),
])
def test_backbones_build_offline_and_give_feature_maps_of_their_stride(name, channels, stride, res5):
    torch.manual_seed(0)
    bb = build_backbone(name, pretrained=False, frozen_bn=False, freeze_stem=False)
    assert (bb.out_channels, bb.stride, bb.res5_head is not None) == (channels, stride, res5)
    bb.body.eval()
    with torch.no_grad():
        feats = bb.body(torch.rand(1, 3, 64, 96))
    assert feats.shape == (1, channels, 64 // stride, 96 // stride)
    if res5:
        assert bb.res5_channels == 2048
        with torch.no_grad():
            out = bb.res5_head.eval()(torch.rand(2, 1024, 7, 7))  # per-RoI layer4, stride 2
        assert out.shape == (2, 2048, 4, 4)


def test_frozen_bn_and_frozen_stem():
    bb = build_backbone("resnet18_c4", pretrained=False, frozen_bn=True, freeze_stem=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.body.modules())
    conv1, layer1, layer2 = bb.body[0], bb.body[4], bb.body[5]
    assert not any(p.requires_grad for p in conv1.parameters())
    assert not any(p.requires_grad for p in layer1.parameters())
    assert all(p.requires_grad for p in layer2.parameters())
    # a frozen BN is a fixed affine map: train mode gives the same output as eval mode
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(bb.body.train()(x), bb.body.eval()(x))

    plain = build_backbone("resnet18_c4", pretrained=False, frozen_bn=False, freeze_stem=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.body.modules())
    assert all(p.requires_grad for p in plain.body.parameters())


def test_unknown_backbone_names_the_key():
    with pytest.raises(ValueError, match="model.backbone: unknown backbone 'vgg16'"):
        build_backbone("vgg16", pretrained=False, frozen_bn=False, freeze_stem=False)


def test_pretrained_offline_fails_with_a_clear_message(monkeypatch, tmp_path):
    # no network: an empty weights cache, and the downloader raises as it does offline
    def offline(url, *args, **kwargs):
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> {url}")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as err:
        build_backbone("resnet18_c4", pretrained=True, frozen_bn=True, freeze_stem=True)
    message = str(err.value)
    assert message.startswith("model.pretrained: could not get ImageNet weights for resnet18")
    assert "model.pretrained: false" in message and "name resolution" in message
