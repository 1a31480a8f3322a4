"""The float type a forward pass runs in (`train.amp`, `infer.amp`), decided in one place.

    autocast_dtype(mode, device) -> torch.bfloat16 | torch.float16 | None (None: float32)

| mode | CUDA | CPU |
|---|---|---|
| "auto" (the default) | bf16 | float32 |
| "bf16" | bf16 | bf16 where the CPU has native bf16 instructions (AVX512-BF16 or AMX; emulated bf16 is slower than float32), else float32 |
| "fp16" | fp16 (with a GradScaler in training) | float32 |
| "off" | float32 | float32 |

Parameters, optimiser state and losses stay float32 in every mode (torch.autocast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix and convolution kernels natively."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_dtype(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of `mode` on `device` (the table above), None for float32."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    if kind == "cpu" and mode == "bf16" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
