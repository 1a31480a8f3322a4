"""model.attention=sdpa (kit/models/sam_attention.py) computes what segment-anything's blocks do.

Tolerances, float32 on the CPU: outputs of O(1) within 2e-5 absolute (measured ~5e-7 per block,
~1e-6 through a whole tiny SAM), gradients within 1e-4 of their largest entry (measured ~1e-6).
"""

from functools import partial

import pytest
import torch
from models_helpers import tiny_config
from segment_anything import build_sam_vit_b
from segment_anything.modeling.image_encoder import Block

from kit.models import build_model, load_pretrained
from kit.models.sam_attention import attention_kernel, sdpa_block

torch.set_num_threads(1)
OUT_TOL, GRAD_TOL = 2e-5, 1e-4


def _block(window: int, grid: int, dim: int = 48, heads: int = 3, lora: bool = False) -> Block:
    torch.manual_seed(0)
    block = Block(dim=dim, num_heads=heads, use_rel_pos=True, window_size=window,
                  input_size=(grid, grid), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))  # fmt: skip
    if lora:
        from kit.models.lora import add_lora_to_qkv

        add_lora_to_qkv(block, rank=4)
    for p in block.parameters():  # rel_pos and LoRA-B start at zero: make every term count
        torch.nn.init.normal_(p, std=0.2)
    return block


def _output_and_grads(fn, block: Block, x: torch.Tensor):
    x = x.clone().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(),
                                [x, *block.parameters()])  # fmt: skip
    return out, grads


def _assert_same(block: Block, x: torch.Tensor) -> float:
    ref, ref_grads = _output_and_grads(block, block, x)
    out, grads = _output_and_grads(partial(sdpa_block, block), block, x)
    diff = (out - ref).abs().max().item()
    assert diff < OUT_TOL, f"max |output difference| {diff:.2e}"
    for g, r in zip(grads, ref_grads, strict=True):
        rel = ((g - r).abs().max() / r.abs().max()).item()
        assert rel < GRAD_TOL, f"max |gradient difference| {rel:.2e} of the largest gradient"
    return diff


@pytest.mark.parametrize(
    ("window", "grid"),
    [(14, 16), (5, 12), (4, 12), (8, 16), (0, 16), (0, 12)],
    ids=[
        "window14-pads-16",
        "window5-pads-12",
        "window4-divides-12",
        "window8-divides-16",
        "global16",
        "global12",
    ],
)
def test_sdpa_block_matches_segment_anything(window, grid):
    x = torch.randn(2, grid, grid, 48)
    _assert_same(_block(window, grid), x)


def test_sdpa_block_matches_with_lora_qkv():
    """LoRA's qkv: padded tokens take its value at zero (the bias) as in Meta's padding."""
    _assert_same(_block(14, 16, lora=True), torch.randn(1, 16, 16, 48))


def test_padded_keys_count(monkeypatch):
    """Padded tokens are keys and values in Meta's windows: filling them with zeros instead of
    the qkv layer's value at zero would change the output (what the match above relies on)."""
    import kit.models.sam_attention as sam_attention

    block, x = _block(14, 16), torch.randn(1, 16, 16, 48)
    pad = sam_attention._pad_with
    monkeypatch.setattr(sam_attention, "_pad_with", lambda t, s, fill: pad(t, s, fill * 0))
    assert (sdpa_block(block, x) - block(x)).abs().max() > 1e-2


@pytest.mark.parametrize(("variant", "tile"), [("vit_tiny16", 32), ("vit_tiny4", 48)])
def test_whole_model_same_logits_and_gradients(variant, tile):
    """vit_tiny16 at 32 px: a 2×2 grid padded to one 14×14 window; vit_tiny4 at 48: 12×12
    tokens in 4-token windows (no padding), the cpu-demo shape."""
    models = {}
    for kernel in ("meta", "sdpa"):
        torch.manual_seed(0)
        models[kernel] = build_model(tiny_config(variant=variant, tile=tile, attention=kernel))
    models["sdpa"].load_state_dict(models["meta"].state_dict())
    for p in models["meta"].image_encoder.parameters():
        torch.nn.init.normal_(p, std=0.05)
    models["sdpa"].load_state_dict(models["meta"].state_dict())
    x = torch.rand(2, 4, tile, tile)
    results = {}
    for kernel, model in models.items():
        out = model(x)
        loss = (out.logits * torch.linspace(-1, 1, tile)).sum() + out.iou.sum()
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results[kernel] = out.logits.detach(), grads
    (ref, ref_grads), (got, grads) = results["meta"], results["sdpa"]
    assert (got - ref).abs().max() < OUT_TOL * ref.abs().max().clamp_min(1)
    assert grads.keys() == ref_grads.keys()
    # relative to the largest gradient: some are zero in exact arithmetic (a softmax ignores
    # its keys' bias), so rounding is all they have
    scale = max(g.abs().max() for g in ref_grads.values())
    for name, g in grads.items():
        assert ((g - ref_grads[name]).abs().max() / scale) < GRAD_TOL, name


def test_meta_checkpoint_loads_unchanged_and_encodes_alike(tmp_path):
    """A Meta-layout vit_b file (segment_anything's own build, random init) loads strictly into
    the sdpa model (every key and shape as in Meta's file), and the sdpa encoder's embedding
    equals segment-anything's own ImageEncoderViT.forward on the same loaded weights."""
    torch.manual_seed(0)
    state = build_sam_vit_b().state_dict()
    for key in state:
        if "rel_pos" in key:
            state[key] = torch.randn_like(state[key]) * 0.1
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(state, path)
    config = tiny_config(variant="vit_b", tile=256, pretrained=str(path), attention="sdpa")
    model = build_model(config)
    load_pretrained(model, config)  # strict: a missing, unexpected or reshaped key raises
    x = torch.rand(1, 4, 256, 256)
    with torch.no_grad():
        image = (model.adapter(x) * 255.0 - model.pixel_mean) / model.pixel_std
        meta_embedding = model.image_encoder(image)  # segment_anything's forward, Meta attention
        kit_embedding = model.encode(x)
    diff = (kit_embedding - meta_embedding).abs().max().item()
    assert diff < 1e-4, f"max |embedding difference| {diff:.2e}"


def test_auto_picks_per_device():
    assert attention_kernel("meta", torch.device("cuda")) == "meta"
    assert attention_kernel("auto", torch.device("cuda")) == "sdpa"
    assert attention_kernel("auto", torch.device("cpu")) in ("sdpa", "meta")


def test_the_relative_index_first_built_under_inference_mode_still_trains():
    # validation (inference_mode) may build the cached index before the next training step
    from kit.models import sam_attention

    sam_attention._REL_INDEX.clear()
    rel_pos = torch.randn(9, 4, requires_grad=True)
    with torch.inference_mode():
        sam_attention._rel_index(5, rel_pos.detach())
    rel_pos[sam_attention._rel_index(5, rel_pos)].sum().backward()
    assert rel_pos.grad is not None
