"""Every TTA transform is inverted exactly; unknown names are rejected."""

import pytest
import torch

from kit.infer.tta import TRANSFORMS, check_tta, tta_probabilities


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_round_trips(name):
    x = torch.randn(2, 3, 7, 7)
    forward, inverse = TRANSFORMS[name]
    assert torch.equal(inverse(forward(x)), x)
    if name != "identity":
        assert not torch.equal(forward(x), x)


def test_pixelwise_model_is_unchanged_by_tta():
    x = torch.randn(2, 1, 9, 9)
    out = tta_probabilities(lambda t: t * 3, x, list(TRANSFORMS))
    torch.testing.assert_close(out, torch.sigmoid(x * 3))


def test_tta_averages_probabilities():
    pattern = torch.zeros(1, 1, 4, 4)
    pattern[..., 0, 0] = 10.0  # a model that always sees ink in its top-left corner
    out = tta_probabilities(lambda t: pattern, torch.zeros(1, 1, 4, 4), ["identity", "hflip"])
    assert out[0, 0, 0, 3] == out[0, 0, 0, 0]  # hflip's corner was mapped back to the right
    assert out[0, 0, 0, 0] == pytest.approx((torch.sigmoid(torch.tensor(10.0)).item() + 0.5) / 2)


def test_unknown_transform():
    with pytest.raises(ValueError, match="rot90"):
        check_tta(["transpose"])
