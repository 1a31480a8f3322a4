import pytest
import torch
from models_helpers import tiny_config

from kit.errors import KitError
from kit.models import build_model, param_groups
from kit.models.embedding_cache import EmbeddingCache, tile_key

torch.set_num_threads(1)

# Prompt-encoder parameters a prompt-free model uses: only the "no mask" embedding.
PROMPT_FREE_USED = {"prompt_encoder.no_mask_embed.weight"}


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_trains_adapter_prompt_encoder_and_decoder_only():
    model = build_model(tiny_config(train_mode="frozen"))
    names = {n for n, _ in model.named_parameters()}
    expected = {n for n in names if n.startswith(("adapter.", "mask_decoder."))} | PROMPT_FREE_USED
    assert _trainable(model) == expected


def test_lora_trains_only_lora_factors_in_the_encoder():
    model = build_model(tiny_config(train_mode="lora", lora_rank=2))
    trainable = _trainable(model)
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    assert encoder == {
        f"image_encoder.blocks.{i}.attn.qkv.lora_{ab}" for i in range(4) for ab in "ab"
    }
    assert model.image_encoder.blocks[0].attn.qkv.lora_a.shape == (2, 96)
    assert {n for n in trainable if n.startswith("prompt_encoder.")} == PROMPT_FREE_USED
    assert all(p.requires_grad for p in model.mask_decoder.parameters())


def test_lora_starts_equal_to_the_base_model_and_then_learns():
    torch.manual_seed(0)
    base = build_model(tiny_config(train_mode="full")).eval()
    lora = build_model(tiny_config(train_mode="lora")).eval()
    lora.load_state_dict(base.state_dict(), strict=False)
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(base(x).logits, lora(x).logits, atol=1e-6)
    lora(x).logits.mean().backward()
    assert lora.image_encoder.blocks[0].attn.qkv.lora_b.grad.abs().sum() > 0
    assert lora.image_encoder.blocks[0].attn.qkv.weight.grad is None


@pytest.mark.parametrize("prompt", ["none", "box", "points", "mask"])
def test_every_trainable_parameter_gets_a_gradient(prompt):
    """Unused trainable parameters would break DDP's gradient sync (and waste optimizer state)."""
    from kit.models.prompts import sample_points

    model = build_model(tiny_config(prompt=prompt, adapter="stem3d"))
    channels = 5 if prompt == "mask" else 4  # mask: the 4 slices and the prior
    x, target = torch.rand(2, channels, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    prompts = sample_points(target, 4) if prompt == "points" else None
    out = model(x, prompts=prompts)
    (out.logits.mean() + out.iou.mean()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_iou_head_trains_only_with_the_iou_loss():
    config = tiny_config()
    config.loss.iou = 0.0
    names = _trainable(build_model(config))
    assert not any(n.startswith("mask_decoder.iou_prediction_head.") for n in names)
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in _trainable(
        build_model(tiny_config())
    )


def test_full_mode_param_groups_apply_layer_decay_and_no_decay_sets():
    config = tiny_config(train_mode="full", layer_decay=0.5)
    config.train.lr, config.train.weight_decay = 1.0, 0.1
    model = build_model(config)
    groups = param_groups(model, config)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_param) == len(_trainable(model))  # only trainable params, each once
    depth = 4  # vit_tiny blocks; layers: 0 stem, 1..4 blocks, 5 neck + decoder
    assert by_param[id(named["adapter.proj.weight"])]["lr"] == 0.5**5
    assert by_param[id(named["image_encoder.blocks.0.attn.qkv.weight"])]["lr"] == 0.5**4
    assert by_param[id(named[f"image_encoder.blocks.{depth - 1}.mlp.lin1.weight"])]["lr"] == 0.5
    assert by_param[id(named["mask_decoder.iou_token.weight"])]["lr_scale"] == 1.0
    for name in ("image_encoder.pos_embed", "image_encoder.blocks.1.attn.rel_pos_h",
                 "image_encoder.blocks.1.norm1.weight", "mask_decoder.iou_token.weight",
                 "image_encoder.blocks.1.attn.qkv.bias"):  # fmt: skip
        assert by_param[id(named[name])]["weight_decay"] == 0.0, name
    assert by_param[id(named["image_encoder.blocks.1.attn.qkv.weight"])]["weight_decay"] == 0.1
    frozen = build_model(tiny_config(train_mode="frozen"))
    assert sum(len(g["params"]) for g in param_groups(frozen, config)) == len(_trainable(frozen))


def test_unet_param_groups_decay_by_encoder_stage():
    config = tiny_config("unet", layer_decay=0.5)
    config.train.lr = 1.0
    model = build_model(config)
    lr = {g["name"]: g["lr"] for g in param_groups(model, config)}
    assert lr["layer5"] == 1.0 and lr["layer0"] == 0.5**5 and lr["layer4"] == 0.5
    frozen = build_model(tiny_config("unet", train_mode="frozen"))
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    assert all(p.requires_grad for p in frozen.blocks.parameters())


def test_embedding_cache_returns_the_uncached_logits_and_skips_the_encoder():
    config = tiny_config(train_mode="frozen")
    config.train.embedding_cache = True
    model = build_model(config).eval()
    assert not any(p.requires_grad for p in model.adapter.parameters())
    cache = EmbeddingCache()
    x = torch.rand(3, 4, 32, 32)
    keys = [tile_key("frag1", 0, 32 * i, 0, 4) for i in range(3)]
    reference = model(x)
    first = model(x, cache=cache, cache_keys=keys)
    assert len(cache) == 3 and cache.misses == 3
    assert torch.allclose(first.logits, reference.logits) and torch.allclose(
        first.iou, reference.iou
    )
    # second epoch: no input needed, the encoder is not called, gradients reach the decoder
    model.image_encoder.forward = None  # would raise if called
    again = model(None, cache=cache, cache_keys=keys[::-1])
    assert torch.allclose(again.logits, reference.logits.flip(0), atol=1e-6)
    assert cache.hits == 3
    again.logits.mean().backward()
    assert model.mask_decoder.iou_token.weight.grad is not None


def test_embedding_cache_refuses_a_trainable_encoder_or_adapter():
    cache = EmbeddingCache()
    with pytest.raises(KitError, match="frozen adapter and encoder"):
        build_model(tiny_config(train_mode="lora"))(
            torch.rand(1, 4, 32, 32), cache=cache, cache_keys=[1]
        )
    with pytest.raises(KitError, match=r"adapter\.proj\.weight"):
        build_model(tiny_config(train_mode="frozen"))(
            torch.rand(1, 4, 32, 32), cache=cache, cache_keys=[1]
        )


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    import kit.models.sam as sam_module

    calls = []
    original = sam_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sam_module, "checkpoint", counting)
    torch.manual_seed(0)
    plain = build_model(tiny_config())
    ckpt = build_model(tiny_config(grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 4, 32, 32)
    for model in (plain, ckpt):
        out = model(x)
        (out.logits.square().mean() + out.iou.sum()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    assert len(calls) == 4  # one per encoder block, only in the checkpointed model
