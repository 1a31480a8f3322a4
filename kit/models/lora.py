"""LoRA on the image encoder's qkv projections.

`LoRALinear` subclasses `nn.Linear` and keeps its `weight`/`bias` names, so a Meta checkpoint's
`...attn.qkv.weight` keys still land on the frozen base weights; the low-rank factors `lora_a`,
`lora_b` are the kit's own parameters (listed by `lora_param_names`), kept out of the strict
Meta-key check. `lora_b` starts at zero: at init the layer equals the pretrained one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_SUFFIXES = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """y = x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ with A (r, in), B (out, r)."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float) -> None:
        super().__init__(in_features, out_features, bias=True)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling


def add_lora_to_qkv(encoder: nn.Module, *, rank: int, alpha: float | None = None) -> int:
    """Replace every `attn.qkv` Linear in `encoder` by a LoRALinear (weights copied); returns count."""
    count = 0
    for module in encoder.modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and not isinstance(qkv, LoRALinear):
            lora = LoRALinear(
                qkv.in_features, qkv.out_features, rank=rank, alpha=alpha or float(rank)
            )
            with torch.no_grad():
                lora.weight.copy_(qkv.weight)
                lora.bias.copy_(qkv.bias)
            module.qkv = lora
            count += 1
    return count


def lora_param_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in LORA_SUFFIXES}
