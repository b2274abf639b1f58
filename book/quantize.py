"""int8 weight-only quantization, by hand: per-output-channel symmetric absmax.

Each row w of a weight matrix (one output channel) gets its own scale s = max|w| / 127 and is
stored as q = round(w / s), an int8 in [-127, 127]; ``dequantize`` gives back q * s, off by at
most s / 2 per weight. ``Int8Linear`` keeps q (1 byte a weight) and s (4 bytes a row) and
dequantizes on the fly, so the matrix product itself still runs in floating point: the weights
move through memory in a quarter of fp32's bytes, which is what bandwidth-bound decoding pays for.

``quantize_model`` replaces every ``nn.Linear`` whose weight is its own. The tied token embedding,
which is also the output layer, stays fp32: quantizing it would need an int8 embedding lookup
too, and in the course's character-level models it is a small fraction of the weights. So do
the position embedding, the norms and the biases.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from book import checks

INT8_MAX = 127  # symmetric: -128 is never used, so that q and -q are both representable


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) for a (out, in) weight: int8 q = round(w / s) per row, fp32 s = max|row| / 127."""
    checks.instance("weight", weight, torch.Tensor)
    if weight.ndim != 2 or not weight.dtype.is_floating_point or weight.numel() == 0:
        raise ValueError(f"weight must be a non-empty 2-D floating-point tensor, got shape "
                         f"{tuple(weight.shape)} of dtype {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be finite: an inf or nan has no int8 scale")
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))  # an all-zero row: any s
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 weight q * s, each row of int8 ``q`` times its scale."""
    checks.instance("q", q, torch.Tensor)
    checks.instance("scale", scale, torch.Tensor)
    if q.dtype != torch.int8 or q.ndim != 2 or scale.shape != (q.shape[0],):
        raise ValueError(f"q must be a 2-D int8 tensor and scale one number per row, got q "
                         f"{tuple(q.shape)} {q.dtype} and scale {tuple(scale.shape)}")
    return q.float() * scale[:, None]


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight and a fp32 scale per output channel; the bias stays fp32."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        dequantize(q, scale)  # checks the shapes and dtypes
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        checks.instance("linear", linear, nn.Linear)
        q, scale = quantize_per_channel(linear.weight)
        return cls(q, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.weight_int8, self.scale).to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are ``Int8Linear``; the original is untouched.

    A linear layer whose weight is shared with another module (the tied output layer of a GPT) is
    left in fp32: replacing it would untie the weights and store the matrix twice.
    """
    checks.instance("model", model, nn.Module)
    quantized = copy.deepcopy(model)
    shared = {id(p) for name, module in quantized.named_modules()
              if not isinstance(module, nn.Linear) for p in module.parameters(recurse=False)}
    for name, module in list(quantized.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and id(child.weight) not in shared:
                setattr(module, child_name, Int8Linear.from_linear(child))
    return quantized


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage counted once (tied weights once)."""
    checks.instance("model", model, nn.Module)
    storages = {}
    for t in list(model.parameters()) + list(model.buffers()):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())
