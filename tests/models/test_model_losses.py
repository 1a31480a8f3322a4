import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kit.config import LossConfig
from kit.metrics import LevelHistogram
from kit.models import ModelOutput
from kit.models.losses import level_loss, mask_iou, segmentation_loss


def test_parts_and_total_follow_the_weights():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    iou = torch.tensor([[0.3], [0.9]], requires_grad=True)
    config = LossConfig(bce=1.0, dice=0.5, focal=2.0, iou=3.0)
    parts = segmentation_loss(ModelOutput(logits, iou), target, config=config)
    assert set(parts) == {"total", "bce", "dice", "focal", "iou"}
    assert torch.allclose(parts["bce"], F.binary_cross_entropy_with_logits(logits, target))
    actual = mask_iou(logits, target)
    assert torch.allclose(parts["iou"], F.mse_loss(iou, actual))
    expected = parts["bce"] + 0.5 * parts["dice"] + 2.0 * parts["focal"] + 3.0 * parts["iou"]
    assert torch.allclose(parts["total"], expected)
    parts["total"].backward()
    assert iou.grad is not None and logits.grad is not None


def test_perfect_prediction_scores_low_and_iou_is_exact():
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, :4] = 1
    logits = (target * 2 - 1) * 20
    out = ModelOutput(logits, torch.ones(2, 1))
    parts = segmentation_loss(out, target, config=LossConfig(focal=1.0))
    assert parts["bce"] < 1e-6 and parts["dice"] < 1e-3 and parts["iou"] == 0
    assert mask_iou(logits, target).tolist() == [[1.0], [1.0]]  # the empty tile counts as 1
    half = logits.clone()
    half[0, :, :2] = -20
    assert mask_iou(half, target)[0].item() == pytest.approx(0.5)


def test_label_smoothing_valid_mask_and_unet_output():
    logits = torch.zeros(1, 1, 4, 4)
    target = torch.ones(1, 1, 4, 4)
    smooth = segmentation_loss(ModelOutput(logits), target, config=LossConfig(label_smoothing=0.2))
    assert smooth["iou"] == 0  # no IoU prediction (U-Net): no IoU term
    big = torch.full((1, 1, 4, 4), 30.0)
    assert (
        segmentation_loss(ModelOutput(big), target, config=LossConfig(label_smoothing=0.2))["bce"]
        > 1
    )
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., 0, 0] = 1
    wrong = torch.full((1, 1, 4, 4), -30.0)
    wrong[..., 0, 0] = 30.0
    masked = segmentation_loss(ModelOutput(wrong), target, config=LossConfig(), valid=valid)
    assert masked["bce"] < 1e-6


def test_keyword_only():
    with pytest.raises(TypeError):
        segmentation_loss(
            ModelOutput(torch.zeros(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2), LossConfig()
        )


@pytest.mark.parametrize(
    "config",
    [LossConfig(), LossConfig(bce=0.5, dice=2.0, focal=1.5, focal_alpha=0.25, label_smoothing=0.1)],
)
def test_level_loss_is_segmentation_loss_of_the_pixels(config):
    """The held-out loss of a validation, from the map's level counts, is the training loss of
    its scored pixels taken as one batch (probability k/255, kept half a level off 0 and 1)."""
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    levels[:3] = 0  # confident misses and hits at both ends
    levels[-3:] = 255
    labels = (rng.random((40, 50)) < levels / 300).astype(np.uint8)
    labels[0, :10] = labels[-1, :10] = 1
    scored = rng.random((40, 50)) < 0.7
    prob = torch.from_numpy(levels / 255).clamp(0.5 / 255, 254.5 / 255)
    output = ModelOutput(torch.logit(prob)[None, None])
    target = torch.from_numpy(labels).double()[None, None]
    valid = torch.from_numpy(scored).double()[None, None]
    expected = segmentation_loss(output, target, config=config, valid=valid)
    h = LevelHistogram.of(levels, labels, mask=scored)
    got = level_loss(h.pos, h.neg, config=config)
    assert set(got) == {"total", "bce", "dice", "focal"}
    for k, v in got.items():
        assert v == pytest.approx(float(expected[k]), rel=1e-5), k
    assert got["total"] > 0.1
