import itertools

import pytest
import torch
from models_helpers import tiny_config

from kit.errors import KitError
from kit.models import ModelOutput, build_model
from kit.models.prompts import sample_points

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("adapter", "prompt"),
    list(itertools.product(["conv1x1", "stem3d", "mosaic"], ["none", "box", "points"])),
)
def test_sam_forward_backward_shapes_for_every_adapter_and_prompt(adapter, prompt):
    config = tiny_config(adapter=adapter, prompt=prompt, train_mode="full")
    model = build_model(config)
    x = torch.rand(3, 4, 32, 32)
    target = (torch.rand(3, 1, 32, 32) > 0.7).float()
    prompts = sample_points(target, 5) if prompt == "points" else None
    out = model(x, prompts=prompts)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 1, 32, 32) and out.iou.shape == (3, 1)
    (out.logits.mean() + out.iou.mean()).backward()
    assert model.mask_decoder.iou_token.weight.grad is not None
    assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    if adapter != "mosaic":
        assert model.adapter.proj.weight.grad.abs().sum() > 0
    # a points model runs prompt-free at inference (no labels there)
    with torch.inference_mode():
        assert model(x).logits.shape == (3, 1, 32, 32)


def test_ir_mode_single_channel_replicates_into_rgb():
    config = tiny_config(channels=1)
    config.data.input_mode = "ir"
    model = build_model(config)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(model.adapter(x), x.expand(-1, 3, -1, -1))


def test_adapters_start_as_the_channel_average():
    x = torch.rand(2, 4, 32, 32)
    for adapter in ("conv1x1", "stem3d"):
        model = build_model(tiny_config(adapter=adapter))
        expected = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        assert torch.allclose(model.adapter(x), expected, atol=1e-6)


def test_mosaic_places_every_slice_in_its_cell_and_folds_back():
    model = build_model(tiny_config(adapter="mosaic", channels=3))
    assert model.img_size == 64  # ceil(sqrt(3)) = 2 cells a side
    x = torch.rand(1, 3, 32, 32)
    image = model.adapter(x)
    assert torch.equal(image[0, 0, :32, 32:], x[0, 1]) and torch.equal(
        image[0, 0, 32:, :32], x[0, 2]
    )
    assert image[0, :, 32:, 32:].abs().sum() == 0  # the 4th cell is empty
    cells = torch.zeros(1, 1, 64, 64)
    cells[..., :32, :32], cells[..., :32, 32:], cells[..., 32:, :32] = 1.0, 2.0, 3.0
    assert torch.allclose(model.adapter.fold(cells), torch.full((1, 1, 32, 32), 2.0))


def test_unet_forward_backward_at_full_resolution():
    model = build_model(tiny_config("unet", channels=5))
    x = torch.rand(2, 5, 32, 32)
    out = model(x)
    assert out.logits.shape == (2, 1, 32, 32) and out.iou is None
    out.logits.mean().backward()
    assert model.encoder.conv1[0].weight.shape[1] == 5
    assert model.encoder.conv1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"family": "vit"}, "unknown model.family 'vit'; valid: \\['sam', 'unet'\\]"),
        ({"variant": "vit_q"}, "vit_b"),
        ({"adapter": "pca"}, "conv1x1"),
        ({"prompt": "text"}, "points"),
        ({"train_mode": "half"}, "frozen"),
    ],
)
def test_unknown_names_list_the_valid_ones(overrides, message):
    with pytest.raises(KitError, match=message):
        build_model(tiny_config(**overrides))


def test_unknown_timm_encoder_and_bad_tile_are_kit_errors():
    with pytest.raises(KitError, match="resnet10t"):
        build_model(tiny_config("unet", variant="resnet10x"))
    with pytest.raises(KitError, match="multiple of vit_tiny's patch size 8"):
        build_model(tiny_config(tile=36))
    with pytest.raises(
        KitError, match=r"train_mode='lora' is for model.family sam; .*\['frozen', 'full'\]"
    ):
        build_model(tiny_config("unet", train_mode="lora"))


@pytest.mark.parametrize("family_mode", [("sam", "lora"), ("unet", "full")])
def test_checkpoint_rebuilds_the_same_model_from_its_config(tmp_path, family_mode):
    from kit.checkpoint import model_from_checkpoint, save_checkpoint
    from kit.config import config_to_dict

    family, mode = family_mode
    config = tiny_config(family, train_mode=mode)
    if family == "sam":
        config.model.adapter = "stem3d"
    model = build_model(config).eval()
    save_checkpoint(
        tmp_path / "m.pt", {"config": config_to_dict(config), "model": model.state_dict()}
    )
    rebuilt, stored = model_from_checkpoint(tmp_path / "m.pt")
    assert stored == config
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, model(x).logits)
