"""The device-side inference path: channels_last conversion of real models, the band kept on the
device, the uint8 finish on tensors, and (with a GPU) CUDA against CPU maps."""

import numpy as np
import pytest
import torch
from infer_helpers import ConvModel, naive_predict, small_config, write_fragment

from kit.checkpoint import save_checkpoint
from kit.config import config_to_dict, load_config
from kit.data.fragment import Fragment
from kit.infer.ensemble import load_members, resolve_members
from kit.infer.stitch import predict_fragment, to_channels_last
from kit.models import build_model
from kit.tiles import add_tile, finish_uint8


def _stem3d_sam():
    """The cpu-demo SAM (stem3d adapter: Conv3d weights of rank 5) with no all-zero weight left,
    so that the 3D branch (zero-initialised) changes the output."""
    torch.manual_seed(0)
    fixed = [
        "data.z_start=27",
        "data.z_end=37",
        "data.reverse=false",
        "data.flatten=false",
        "model.input_gain=80",
    ]
    config = load_config("cpu-demo", fixed)  # the "auto" fields as a run resolves them
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.2)
    assert any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    return model, config


def _conv_weights(model, kind):
    return {n: m.weight for n, m in model.named_modules() if type(m) is kind}


def test_load_members_for_cuda_converts_a_stem3d_sam(tmp_path):
    """`kit predict --device cuda` with the cpu-demo preset raised 'required rank 4 tensor to use
    channels_last format': load_members converted the whole model, Conv3d included."""
    model, config = _stem3d_sam()
    path = tmp_path / "sam.pt"
    save_checkpoint(path, {"config": config_to_dict(config), "model": model.state_dict()})
    (member,) = load_members(resolve_members([str(path)]), device="cuda")  # stays on the CPU
    converted = member.model.eval()

    conv2d = _conv_weights(converted, torch.nn.Conv2d)
    spatial = [n for n, w in conv2d.items() if w.shape[1] > 1 and w.shape[-1] > 1]
    assert spatial  # 1x1 kernels or one input channel: both layouts at once
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv2d.values())
    assert not any(model.get_submodule(n).weight.is_contiguous(memory_format=torch.channels_last)
                   for n in spatial)  # fmt: skip
    conv3d = _conv_weights(converted, torch.nn.Conv3d)
    assert conv3d and all(w.is_contiguous() for w in conv3d.values())
    for name, w in conv3d.items():
        torch.testing.assert_close(w, model.get_submodule(name).weight, rtol=0, atol=0)

    x = torch.rand(3, config.data.in_channels, config.data.tile, config.data.tile)
    with torch.inference_mode():
        expected, got = model(x).logits, converted(x).logits
    assert expected.std() > 0.01  # a flat output would hide a broken conversion
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_to_channels_last_leaves_other_rank4_tensors_alone():
    model, _ = _stem3d_sam()
    pos_embed = [p for n, p in model.named_parameters() if p.dim() == 4 and "pos" in n]
    assert pos_embed
    strides = [p.stride() for p in pos_embed]
    assert to_channels_last(model) is model
    assert [p.stride() for p in pos_embed] == strides


def test_finish_uint8_matches_numpy_float32_bit_for_bit():
    rng = np.random.default_rng(0)
    weights = rng.random((64, 80), dtype=np.float32) * 3
    weights[::7] = 0  # uncovered pixels
    sums = rng.random((64, 80), dtype=np.float32) * weights
    sums[0, :8] = weights[0, :8] * np.float32(np.arange(8) + 0.5) / 255  # rounding ties
    mean = np.zeros_like(sums)
    np.divide(sums, weights, out=mean, where=weights > 0)
    expected = np.clip(np.rint(mean * np.float32(255)), 0, 255).astype(np.uint8)
    got = finish_uint8(torch.from_numpy(sums), torch.from_numpy(weights))
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("batch_size", [7, 64])
def test_stem3d_sam_map_matches_the_host_reference(tmp_path, batch_size):
    """Bands on the device (here the CPU, the same code), tiles cut from them, batches spanning
    bands, skipped tiles: within 1 level of every tile read, predicted and stitched on the host."""
    model, config = _stem3d_sam()
    config.infer.batch_size = batch_size
    config.data.stride = 16
    mask = np.ones((150, 110), bool)
    mask[60:100, 70:] = False
    fragment = Fragment(write_fragment(tmp_path, "f", shape=(150, 110), n_slices=40, mask=mask))
    out = predict_fragment(model, config, fragment, rows=(10, 140), progress=False)
    ref = naive_predict(model, config, fragment, rows=(10, 140))
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert (out != ref).mean() < 0.01
    assert out[10:140][mask[10:140]].std() > 1  # not a flat map


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("tta", [["identity"], ["hflip", "rot90"]])
def test_cuda_map_matches_cpu_within_one_level(fragment_dir, tta):
    fragment = Fragment(fragment_dir)
    config = small_config(tta=tta, amp="off")
    model = ConvModel()
    cpu = predict_fragment(model, config, fragment, rows=(5, 60), progress=False)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        cuda = predict_fragment(
            to_channels_last(model.cuda()), config, fragment, rows=(5, 60), device="cuda",
            progress=False,
        )  # fmt: skip
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert np.abs(cuda.astype(int) - cpu).max() <= 1


def test_add_tile_on_tensors_equals_numpy():
    """The device accumulator runs kit.tiles.add_tile on tensors (NumPy on the CPU)."""
    rng = np.random.default_rng(1)
    window = rng.random((16, 16), dtype=np.float32) + 0.1
    arrays = [np.zeros((20, 30), np.float32), np.zeros((20, 30), np.float32)]
    tensors = [torch.zeros(20, 30), torch.zeros(20, 30)]
    for y, x in [(0, 0), (-5, 3), (10, 20), (4, 25), (18, -10)]:  # clipped at every border
        pred = rng.random((16, 16), dtype=np.float32)
        add_tile(*arrays, pred, window, y, x)
        add_tile(*tensors, torch.from_numpy(pred), torch.from_numpy(window), y, x)
    for a, t in zip(arrays, tensors, strict=True):
        np.testing.assert_array_equal(t.numpy(), a)
