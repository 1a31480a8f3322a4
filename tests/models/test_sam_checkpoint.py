"""Meta-layout checkpoints: built by segment_anything itself (random init), saved, loaded."""

import pytest
import torch
from models_helpers import tiny_config
from segment_anything import build_sam_vit_b, build_sam_vit_l

from kit.errors import KitError
from kit.models import build_model, load_pretrained
from kit.models.sam_checkpoint import resize_rel_pos

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    torch.manual_seed(0)
    state = build_sam_vit_b().state_dict()
    for key in state:  # rel_pos are zero at init; make them informative for the resize checks
        if "rel_pos" in key:
            state[key] = torch.randn_like(state[key])
    path = tmp_path_factory.mktemp("meta") / "sam_vit_b_random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vit_l_file(tmp_path_factory):
    """vit_l's real key layout and shapes, from a meta-device build; each value a stride-0
    expanded scalar so the file stays a few KB instead of 1.2 GB."""
    with torch.device("meta"):
        layout = build_sam_vit_l().state_dict()
    state = {k: torch.zeros(1).expand(v.shape) for k, v in layout.items()}
    path = tmp_path_factory.mktemp("meta") / "sam_vit_l_layout.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("tile", [256, 512])
def test_meta_vit_b_loads_strictly_at_tile_resolution(vit_b_file, tile):
    path, meta = vit_b_file
    config = tiny_config(variant="vit_b", tile=tile, pretrained=str(path))
    model = build_model(config)
    load_pretrained(model, config)
    state = model.state_dict()
    tokens = tile // 16
    assert state["image_encoder.pos_embed"].shape == (1, tokens, tokens, 768)
    for i, block in enumerate(model.image_encoder.blocks):
        expected = 2 * tokens - 1 if i in (2, 5, 8, 11) else 27  # windowed blocks keep 2·14−1
        assert block.attn.rel_pos_h.shape == (expected, 64)
        key = f"image_encoder.blocks.{i}.attn.rel_pos_w"
        if expected == 27:
            assert torch.equal(state[key], meta[key])
        else:
            assert torch.allclose(state[key], resize_rel_pos(meta[key], expected))
    for key in ("mask_decoder.iou_token.weight", "image_encoder.blocks.7.attn.qkv.weight",
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"):  # fmt: skip
        assert torch.equal(state[key], meta[key])
    # the resized pos_embed is a smooth downsample of the original, not a crop or zeros
    assert torch.allclose(
        state["image_encoder.pos_embed"].mean(), meta["image_encoder.pos_embed"].mean(), atol=1e-3
    )
    with torch.no_grad():
        assert model(torch.rand(1, 4, tile, tile)).logits.shape == (1, 1, tile, tile)


def test_lora_model_loads_meta_weights_under_its_base_layers(vit_b_file):
    path, meta = vit_b_file
    config = tiny_config(variant="vit_b", tile=256, pretrained=str(path), train_mode="lora")
    model = build_model(config)
    load_pretrained(model, config)
    qkv = model.image_encoder.blocks[0].attn.qkv
    assert torch.equal(qkv.weight, meta["image_encoder.blocks.0.attn.qkv.weight"])
    assert torch.count_nonzero(qkv.lora_b) == 0


def test_crop_keeps_the_central_relative_distances():
    rel = torch.arange(127.0)[:, None].expand(127, 4)
    assert resize_rel_pos(rel, 31, "crop")[:, 0].tolist() == list(range(48, 79))
    scaled = resize_rel_pos(rel, 31)[:, 0]  # linear, as SAM's own get_rel_pos
    assert scaled[15] == 63.0 and (scaled.diff() > 0).all() and scaled[0] < 3 and scaled[-1] > 123


def test_vit_l_checkpoint_into_vit_b_fails_naming_the_keys(vit_l_file):
    config = tiny_config(variant="vit_b", tile=256, pretrained=str(vit_l_file))
    model = build_model(config)
    before = model.image_encoder.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(KitError) as err:
        load_pretrained(model, config)
    message = str(err.value)
    assert "1024-dim, 24 blocks" in message and "model vit_b" in message
    assert "unexpected keys 168" in message and "image_encoder.blocks.12." in message
    assert "patch_embed.proj.weight (1024, 3, 16, 16) vs model (768, 3, 16, 16)" in message
    assert torch.equal(model.image_encoder.blocks[0].attn.qkv.weight, before)  # nothing loaded


def test_missing_keys_and_non_meta_files_are_named(vit_b_file, tmp_path):
    _, meta = vit_b_file
    partial = {
        k: v for k, v in meta.items() if not k.startswith("mask_decoder.iou_prediction_head")
    }
    partial["image_encoder.extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    config = tiny_config(variant="vit_b", tile=256, pretrained=str(tmp_path / "partial.pth"))
    model = build_model(config)
    with pytest.raises(KitError, match=r"missing keys 6: \['mask_decoder.iou_prediction_head"):
        load_pretrained(model, config)
    with pytest.raises(KitError, match=r"unexpected keys 1: \['image_encoder.extra.weight'\]"):
        load_pretrained(model, config)
    torch.save({"config": {}, "model": {}}, tmp_path / "run.pt")
    with pytest.raises(KitError, match="not a Meta SAM checkpoint"):
        load_pretrained(
            model, tiny_config(variant="vit_b", tile=256, pretrained=str(tmp_path / "run.pt"))
        )
    with pytest.raises(KitError, match="does not exist"):
        load_pretrained(model, tiny_config(variant="vit_b", pretrained=str(tmp_path / "nope.pth")))
