"""model.input_gain: contrast amplification around the tile mean in front of the SAM encoder."""

from __future__ import annotations

import torch
from models_helpers import tiny_config

from kit.models import build_model


def _adapter_image(model, x: torch.Tensor) -> torch.Tensor:
    """What the patch embedding sees: (B, 3, T, T) in SAM's normalised pixel frame."""
    seen = {}

    def keep(_module, inputs, _output) -> None:
        seen["image"] = inputs[0]

    hook = model.image_encoder.patch_embed.register_forward_hook(keep)
    with torch.no_grad():
        model.encode(x)
    hook.remove()
    return seen["image"]


def test_input_gain_amplifies_contrast_around_the_tile_mean():
    torch.manual_seed(0)
    x = 0.4 + 0.01 * torch.randn(2, 4, 32, 32)
    plain = build_model(tiny_config())
    gained = build_model(tiny_config(input_gain=40.0))
    gained.load_state_dict(plain.state_dict())
    a, b = _adapter_image(plain, x), _adapter_image(gained, x)
    # off: the tile's brightness passes through; on: each tile is centred at 0.5 (SAM frame)
    centre = (0.5 * 255.0 - plain.pixel_mean) / plain.pixel_std
    assert not torch.allclose(a.mean(dim=(2, 3), keepdim=True), centre, atol=0.05)
    torch.testing.assert_close(b.mean(dim=(2, 3), keepdim=True), centre.expand(2, 3, 1, 1))
    # the contrast (std within a tile) grows by the gain
    ratio = b.std(dim=(2, 3)) / a.std(dim=(2, 3))
    torch.testing.assert_close(ratio, torch.full_like(ratio, 40.0), rtol=1e-3, atol=0)


def test_input_gain_ignores_a_brightness_offset():
    torch.manual_seed(1)
    x = torch.rand(1, 4, 32, 32) * 0.1
    model = build_model(tiny_config(input_gain=10.0)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x + 0.3).logits, rtol=1e-4, atol=1e-4)
