"""model.prompt=mask: the prior channel goes through SAM's mask prompt (the cascade's stage 2)."""

import pytest
import torch
from models_helpers import tiny_config

from kit.config import ConfigError, load_config
from kit.models import build_model, needs_prior

torch.set_num_threads(1)


@pytest.mark.parametrize("variant", ["vit_tiny", "vit_tiny4"])
def test_the_prior_changes_the_output_and_the_image_is_read_without_it(variant):
    torch.manual_seed(0)
    model = build_model(tiny_config(prompt="mask", variant=variant)).eval()
    image = torch.rand(2, 4, 32, 32)
    low, high = torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    with torch.no_grad():
        a = model(torch.cat([image, low], 1)).logits
        b = model(torch.cat([image, high], 1)).logits
        # the prior is not part of the image: the embedding is the plain slices'
        assert torch.equal(model.encode(image), model.encode(model.split_prior(
            torch.cat([image, high], 1))[0]))  # fmt: skip
    assert a.shape == (2, 1, 32, 32)
    assert (a - b).abs().max() > 1e-4
    # the mask prompt is at 4x the embedding grid: tile-sized for vit_tiny4, a quarter for vit_tiny
    side = model.prompt_encoder.mask_input_size[0]
    assert model.mask_prompt(high).shape[-1] == side == (32 if variant == "vit_tiny4" else 16)


def test_the_mask_downscaler_trains_only_with_the_mask_prompt():
    def trainable(prompt):
        model = build_model(tiny_config(prompt=prompt))
        return {n for n, p in model.named_parameters() if p.requires_grad}

    mask, plain = trainable("mask"), trainable("none")
    assert any(n.startswith("prompt_encoder.mask_downscaling.") for n in mask)
    assert not any(n.startswith("prompt_encoder.mask_downscaling.") for n in plain)
    assert "prompt_encoder.no_mask_embed.weight" in plain - mask


def test_a_missing_prior_channel_is_refused_naming_the_fix():
    model = build_model(tiny_config(prompt="mask"))
    with pytest.raises(ValueError, match=r"prior channel, got 4 channels.*--prior DIR"):
        model(torch.rand(1, 4, 32, 32))


def test_needs_prior_and_the_cascade_preset():
    assert needs_prior(load_config("cpu-demo-cascade"))
    assert not needs_prior(load_config("cpu-demo")) and not needs_prior(
        load_config("cpu-demo-unet")
    )
    with pytest.raises(ConfigError, match="mosaic"):
        load_config("cpu-demo-cascade", ["model.adapter=mosaic"])


def test_prior_residual_adds_the_prior_s_logits_to_the_output():
    from kit.models.sam import prior_logits

    torch.manual_seed(0)
    plain = build_model(tiny_config(prompt="mask")).eval()
    residual = build_model(tiny_config(prompt="mask", prior_residual=True)).eval()
    residual.load_state_dict(plain.state_dict())
    x = torch.rand(2, 5, 32, 32)
    with torch.no_grad():
        diff = residual(x).logits - plain(x).logits
    assert torch.allclose(diff, prior_logits(x[:, 4:]), atol=1e-5)
    with pytest.raises(ConfigError, match="prior_residual"):
        load_config("cpu-demo", ["model.prior_residual=true"])
