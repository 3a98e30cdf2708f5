"""build_model's reading of the config: BatchNorm frozen with ImageNet weights unless told
otherwise, and the recipe warnings (settings that train, but not as the user most likely wants)."""

import pytest
from torchvision.ops import FrozenBatchNorm2d

import frcnn.model.backbone as backbone_module
from frcnn.config import config_from_dict
from frcnn.model.build import build_model, frozen_bn, recipe_warnings


@pytest.mark.parametrize("pretrained, setting, frozen", [
    (True, None, True), (False, None, False), (True, False, False), (False, True, True)])
def test_batchnorm_is_frozen_exactly_when_pretrained_unless_set(pretrained, setting, frozen):
    cfg = config_from_dict({"model": {"pretrained": pretrained, "frozen_bn": setting}})
    assert frozen_bn(cfg) is frozen


def test_build_model_passes_the_resolved_setting_to_the_backbone(monkeypatch):
    seen = []
    real = backbone_module._load_resnet

    def no_download(arch, weights_enum, pretrained, frozen):  # ImageNet weights need internet
        seen.append(frozen)
        return real(arch, weights_enum, False, frozen)

    monkeypatch.setattr(backbone_module, "_load_resnet", no_download)
    model = build_model(config_from_dict({"model": {"pretrained": True}}), num_classes=3)
    assert seen == [True]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    build_model(config_from_dict({}), num_classes=3)
    assert seen == [True, False]


def test_recipe_warnings_name_bn_training_on_imagenet_weights_and_a_small_c4_pool():
    assert recipe_warnings(config_from_dict({})) == []
    lines = recipe_warnings(config_from_dict({"model": {"pretrained": True, "frozen_bn": False}}))
    assert len(lines) == 1 and lines[0].startswith("model.frozen_bn: false with ImageNet weights")
    c4 = {"model": {"backbone": "resnet50_c4"}}
    lines = recipe_warnings(config_from_dict(c4))
    assert len(lines) == 1 and "res5 (stride 2) shrinks each RoI to 4x4" in lines[0]
    assert recipe_warnings(config_from_dict({**c4, "roi": {"output_size": 14}})) == []
