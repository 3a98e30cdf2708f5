"""frcnn.model.transform: input checks, resize + normalise + pad, and boxes back to input pixels."""

from __future__ import annotations

import pytest
import torch

from frcnn.model.transform import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    validate_inputs,
)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


GOOD = target([[1.0, 2.0, 10.0, 12.0]], [1])


@pytest.mark.parametrize("images, targets, message", [
    ([torch.rand(3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8)], None,
     "image 1: expected a float tensor in [0, 1], got torch.uint8"),
    ([torch.rand(3, 8, 8), torch.rand(8, 8)], None, "image 1: expected a Tensor[3, H, W], got (8, 8)"),
    ([torch.rand(1, 8, 8)], None, "image 0: expected a Tensor[3, H, W], got (1, 8, 8)"),
    ([torch.rand(1, 3, 8, 8)], None, "image 0: expected a Tensor[3, H, W], got (1, 3, 8, 8)"),
    ([torch.rand(3, 0, 8)], None, "image 0: empty image"),
    ([[0.5]], None, "image 0: expected a Tensor[3, H, W], got list"),
    ([], None, "images: expected a non-empty list"),
    ([torch.rand(3, 8, 8)] * 2, [GOOD, target([[5.0, 5.0, 5.0, 9.0]], [1])],
     "target 1: box 0 [5.0, 5.0, 5.0, 9.0] has x2 <= x1 or y2 <= y1"),
    ([torch.rand(3, 8, 8)] * 2, [GOOD, target([[1.0, 1.0, 4.0, 4.0], [1.0, 9.0, 4.0, 3.0]], [1, 1])],
     "target 1: box 1 [1.0, 9.0, 4.0, 3.0] has x2 <= x1 or y2 <= y1"),
    ([torch.rand(3, 8, 8)] * 2, [target([[float("nan"), 1.0, 4.0, 4.0]], [1]), GOOD],
     "target 0: boxes contain NaN or inf"),
    ([torch.rand(3, 8, 8)] * 2, [GOOD, target([[0.0, 1.0, float("inf"), 4.0]], [1])],
     "target 1: boxes contain NaN or inf"),
    ([torch.rand(3, 8, 8)] * 2, [GOOD, target([[0.0, 0.0, 4.0, 4.0]], [4])],
     "target 1: label 4 of box 0 is outside 1..3 (0 is background)"),
    ([torch.rand(3, 8, 8)] * 2, [GOOD, target([[0.0, 0.0, 4.0, 4.0]], [0])],
     "target 1: label 0 of box 0 is outside 1..3 (0 is background)"),
    ([torch.rand(3, 8, 8)] * 2, [GOOD, target([[0.0, 0.0, 4.0, 4.0]], [-1])],
     "target 1: label -1 of box 0 is outside 1..3"),
    ([torch.rand(3, 8, 8)], [target([[0.0, 0.0, 4.0, 4.0]], [1.0])], "target 0: labels must be integers"),
    ([torch.rand(3, 8, 8)], [target([[0.0, 0.0, 4.0, 4.0]], [True])], "target 0: labels must be integers"),
    ([torch.rand(3, 8, 8)], [target([[0.0, 0.0, 4.0, 4.0]], [1, 2])], "target 0: labels must be a Tensor[N]"),
    ([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(4), "labels": torch.zeros(0)}],
     "target 0: boxes must be a float Tensor[N, 4]"),
    ([torch.rand(3, 8, 8)], [GOOD, GOOD], "targets: 2 targets for 1 images"),
])
def test_bad_input_raises_value_error_naming_the_index_and_problem(images, targets, message):
    with pytest.raises(ValueError) as err:
        validate_inputs(images, targets, num_classes=3)
    assert str(err.value).startswith(message)


def test_good_input_passes_including_an_image_without_boxes():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    validate_inputs([torch.rand(3, 8, 8), torch.rand(3, 5, 9, dtype=torch.float64)],
                    [target([[0.0, 0.0, 8.0, 8.0]], [3]), empty], num_classes=3)


def test_resize_short_side_to_min_unless_long_side_exceeds_max():
    t = ImageTransform(min_size=256, max_size=320, size_divisible=16)
    assert t.scale_for(128, 128) == 2.0            # short side -> 256
    assert t.scale_for(100, 200) == 1.6            # 256 / 100 = 2.56 would make 512 > 320
    batch, sizes, targets = t([torch.rand(3, 100, 200)], [target([[10.0, 20.0, 50.0, 60.0]], [2])])
    assert sizes == [(160, 320)]
    assert batch.shape == (1, 3, 160, 320)
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[16.0, 32.0, 80.0, 96.0]]))
    assert targets[0]["labels"].tolist() == [2]


def test_normalises_with_imagenet_statistics_and_pads_bottom_right_to_the_stride():
    t = ImageTransform(min_size=40, max_size=100, size_divisible=16)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    a = mean.expand(3, 40, 50).clone()                 # the mean colour -> 0 after normalising
    b = (mean + torch.tensor(IMAGENET_STD).view(3, 1, 1)).expand(3, 40, 40).clone()  # -> 1
    batch, sizes, targets = t([a, b])
    assert targets is None and sizes == [(40, 50), (40, 40)]
    assert batch.shape == (2, 3, 48, 64)               # ceil to multiples of 16
    torch.testing.assert_close(batch[0, :, :40, :50], torch.zeros(3, 40, 50), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1, :, :40, :40], torch.ones(3, 40, 40), atol=1e-5, rtol=0)
    assert batch[0, :, 40:].abs().sum() == 0 and batch[1, :, :, 40:].abs().sum() == 0


def test_other_integer_label_and_float_image_types_are_converted():
    t = ImageTransform(min_size=32, max_size=64)
    img = torch.rand(3, 32, 32, dtype=torch.float64)
    boxes = torch.tensor([[1, 2, 10, 12]])             # integer boxes are fine too
    batch, _, targets = t([img], [{"boxes": boxes, "labels": torch.tensor([2], dtype=torch.int32)}])
    assert batch.dtype == torch.float32
    assert targets[0]["labels"].dtype == torch.int64 and targets[0]["boxes"].dtype == torch.float32


def test_postprocess_maps_boxes_back_to_the_input_image():
    t = ImageTransform(min_size=256, max_size=320)
    dets = [{"boxes": torch.tensor([[16.0, 32.0, 80.0, 96.0], [0.0, 0.0, 320.0, 160.0]])}]
    out = t.postprocess(dets, sizes=[(160, 320)], original_sizes=[(100, 200)])
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[10.0, 20.0, 50.0, 60.0],
                                                              [0.0, 0.0, 200.0, 100.0]]))


def test_multi_scale_training_draws_one_short_side_per_batch_and_tests_at_min_size():
    t = ImageTransform(min_size=64, max_size=200, size_divisible=16, min_size_train=(32, 48, 80))
    img = torch.rand(3, 40, 60)
    box = [target([[4.0, 8.0, 20.0, 24.0]], [1])]
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        batch, sizes, targets = t([img, img], box * 2)
        assert sizes[0] == sizes[1]  # one size for the whole batch
        short = sizes[0][0]
        seen.add(short)
        k = short / 40
        torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[4.0, 8.0, 20.0, 24.0]]) * k)
    assert seen == {32, 48, 80}
    # the draw comes from the global RNG (checkpointed): the same seed draws the same sizes
    torch.manual_seed(0)
    again = [t([img])[1][0][0] for _ in range(30)]
    torch.manual_seed(0)
    assert again == [t([img])[1][0][0] for _ in range(30)]
    t.eval()
    assert t([img])[1] == [(64, 96)]


def test_single_scale_training_draws_nothing_from_the_rng():
    """The default recipe's numbers depend on the RNG stream the samplers see."""
    t = ImageTransform(min_size=64, max_size=200)
    assert t.training
    image = torch.rand(3, 40, 60)
    state = torch.get_rng_state()
    assert t([image])[1] == [(64, 96)]
    assert torch.equal(torch.get_rng_state(), state)
