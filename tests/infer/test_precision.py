"""kit.precision: which float type train.amp / infer.amp give on each device, and that
prediction and training run their forward in it."""

import pytest
import torch
from infer_helpers import ConvModel, small_config, write_fragment

import kit.precision
from kit.data.fragment import Fragment
from kit.infer.stitch import predict_fragment
from kit.precision import autocast_dtype

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.mark.parametrize("native", [True, False])
def test_the_table_of_modes_and_devices(monkeypatch, native):
    monkeypatch.setattr(kit.precision, "cpu_has_native_bf16", lambda: native)
    expected = {
        ("auto", "cuda"): BF16, ("bf16", "cuda"): BF16, ("fp16", "cuda"): FP16,
        ("off", "cuda"): None, ("auto", "cpu"): None, ("bf16", "cpu"): BF16 if native else None,
        ("fp16", "cpu"): None, ("off", "cpu"): None,
    }  # fmt: skip
    got = {(mode, dev): autocast_dtype(mode, torch.device(dev)) for mode, dev in expected}
    assert got == expected
    assert autocast_dtype("bf16", "cuda:1") is BF16  # a device string works as well


class _Recording(ConvModel):
    """ConvModel that notes the autocast dtype each forward ran under (None: float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def forward(self, x):
        on = torch.is_autocast_enabled("cpu")
        self.seen.add(torch.get_autocast_dtype("cpu") if on else None)
        return super().forward(x)


@pytest.mark.parametrize(("mode", "native", "dtype"),
                         [("bf16", True, BF16), ("bf16", False, None), ("auto", True, None)])  # fmt: skip
def test_prediction_runs_its_forward_in_that_type(tmp_path, monkeypatch, mode, native, dtype):
    monkeypatch.setattr(kit.precision, "cpu_has_native_bf16", lambda: native)
    write_fragment(tmp_path, "a", shape=(40, 36))
    model = _Recording().eval()
    prob = predict_fragment(model, small_config(amp=mode), Fragment(tmp_path / "a"), progress=False)
    assert model.seen == {dtype}
    assert prob.shape == (40, 36)
