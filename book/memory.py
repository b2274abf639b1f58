"""Where the bytes of a training step go: weights, gradients, optimizer state, activations.

Two sides, so that each formula can be checked against a measurement:

- formulas: ``training_bytes`` (bytes per parameter for each optimizer and precision),
  ``zero_bytes_per_device`` (ZeRO's stages 0-3, Rajbhandari et al. 2020) and
  ``activation_bytes`` (what the course's GPT saves for backward, term by term);
- measurements: ``measure_saved_bytes`` records the tensors autograd really saves, through
  ``torch.autograd.graph.saved_tensors_hooks``: distinct storages, parameters excluded. (The peak
  of a whole step is measured by ``book.measure.peak_tensor_bytes``.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from book import checks
from book.model import GPTConfig

OPTIMIZERS = ("sgd", "momentum", "adam")
PRECISIONS = ("fp32", "mixed")
STAGES = (0, 1, 2, 3)

# Optimizer state, in fp32 values per parameter: momentum keeps one buffer, Adam two (m and v).
_STATE_VALUES = {"sgd": 0, "momentum": 1, "adam": 2}
_FP32, _HALF, _INT64 = 4, 2, 8


def training_bytes(n_params: int, *, optimizer: str = "adam", precision: str = "mixed") -> dict[str, int]:
    """Bytes of the model state that training keeps for ``n_params`` parameters, by part.

    ``precision="mixed"`` is mixed-precision training as in ZeRO §3.1: 16-bit parameters and
    gradients used by forward and backward, plus an fp32 master copy of the parameters that the
    optimizer updates. For Adam that is 2 + 2 + (4 + 4 + 4) = 16 bytes per parameter. In
    ``"fp32"`` the parameters are the master copy, so there is none beside them.
    """
    n_params = checks.positive_int("n_params", n_params)
    checks.one_of("optimizer", optimizer, OPTIMIZERS)
    checks.one_of("precision", precision, PRECISIONS)
    weight = _HALF if precision == "mixed" else _FP32
    return {
        "parameters": weight * n_params,
        "gradients": weight * n_params,
        "optimizer_state": _FP32 * _STATE_VALUES[optimizer] * n_params,
        "master_weights": (_FP32 if precision == "mixed" else 0) * n_params,
    }


def zero_bytes_per_device(n_params: int, n_devices: int, stage: int, *, optimizer: str = "adam",
                          precision: str = "mixed") -> float:
    """Model-state bytes on each of ``n_devices`` data-parallel devices under ZeRO ``stage``.

    Stage 0 replicates everything; stage 1 shards the optimizer state (with the master weights,
    which only the optimizer reads); stage 2 also the gradients; stage 3 also the parameters.
    ZeRO's Figure 1: 7.5B parameters on 64 devices need 120, 31.4, 16.6 and 1.9 GB.
    """
    n_devices = checks.positive_int("n_devices", n_devices)
    stage = checks.one_of("stage", stage, STAGES)
    parts = training_bytes(n_params, optimizer=optimizer, precision=precision)
    sharded = {"optimizer_state": 1, "master_weights": 1, "gradients": 2, "parameters": 3}
    return sum(b / n_devices if stage >= sharded[name] else b for name, b in parts.items())


def activation_bytes(config: GPTConfig, batch_size: int, seq_len: int) -> dict[str, int]:
    """Bytes the course's GPT saves for backward in ``model(x, targets)``, by part.

    Exact, to the byte, for fp32 training of a dense model without dropout, with the CPU's
    kernels (``attention="sdpa"`` runs PyTorch's fused flash kernel there; ``"naive"`` builds
    the n x n scores). With b sequences of s tokens, width h, a heads, MLP width f and V symbols:

    - embedding: the token ids (int64) and the position ids, 8bs + 8s;
    - per layer, two LayerNorms: each keeps its input and its mean and 1/std, 4bsh + 8bs;
    - per layer, attention: the normalised input of the qkv projection (4bsh) and, for sdpa,
      the qkv output that q, k and v are views of (12bsh), the output (4bsh, which the output
      projection reads in place) and the log-sum-exp of each row (4bas); for naive, contiguous
      copies of q, k and v (12bsh), the causal mask (s^2 bools), the softmax (4bas^2) and the
      output projection's input (4bsh);
    - per layer, MLP: its normalised input (4bsh), the up-projection's output that GELU reads
      (4bsf) and GELU's output that the down-projection reads (4bsf);
    - head: the final LayerNorm (4bsh + 8bs), the lm_head's input (4bsh), the log-softmax of
      the logits (4bsV), the targets (8bs) and the loss's total weight (one fp32 scalar).
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    b = checks.positive_int("batch_size", batch_size)
    s = checks.positive_int("seq_len", seq_len)
    if s > config.n_ctx:
        raise ValueError(f"seq_len must be <= n_ctx={config.n_ctx}, got {s}")
    if config.n_experts or config.dropout or config.attention not in ("sdpa", "naive"):
        raise ValueError("activation_bytes covers dense models (n_experts=0) without dropout, with "
                         f"attention 'sdpa' or 'naive'; got n_experts={config.n_experts}, "
                         f"dropout={config.dropout}, attention={config.attention!r}")
    h, a, f, L, V = config.d_model, config.n_head, config.d_ff, config.n_layer, config.vocab_size
    tokens = b * s
    if config.attention == "sdpa":
        attention = _FP32 * (tokens * h + 3 * tokens * h + tokens * h + b * a * s)
    else:
        attention = _FP32 * (tokens * h + 3 * tokens * h + b * a * s * s + tokens * h) + s * s
    return {
        "embedding": _INT64 * (tokens + s),
        "layer_norms": L * 2 * (_FP32 * tokens * h + 2 * _FP32 * tokens),
        "attention": L * attention,
        "mlp": L * _FP32 * (tokens * h + 2 * tokens * f),
        "head": _FP32 * (2 * tokens * h + 2 * tokens + tokens * V) + _INT64 * tokens + _FP32,
    }


def megatron_activation_bytes(seq_len: int, batch_size: int, d_model: int, n_head: int) -> float:
    """Korthikanti et al. 2022, eq. 1: sbh(34 + 5as/h) bytes per layer of Megatron's GPT.

    Their layer keeps 16-bit activations, 1-byte dropout masks and the s x s attention scores.
    """
    s = checks.positive_int("seq_len", seq_len)
    b = checks.positive_int("batch_size", batch_size)
    h = checks.positive_int("d_model", d_model)
    a = checks.positive_int("n_head", n_head)
    return s * b * h * (34 + 5 * a * s / h)


def saved_tensors(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> list[dict]:
    """The distinct storages autograd saves for backward in ``model(x, targets)``.

    One record per storage (several saved views of one storage count once, as in memory),
    parameters excluded: shape, dtype, bytes, and the operation that made the tensor (``made_by``:
    the name of its ``grad_fn``; "-" for a tensor made outside autograd, such as token ids or a
    LayerNorm's statistics).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch)):
        raise TypeError("batch must be a pair of tensors (x, targets)")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    records: dict[int, dict] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in records:
            records[ptr] = {"shape": tuple(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                            "bytes": storage.nbytes(),
                            "made_by": type(t.grad_fn).__name__ if t.grad_fn is not None else "-"}
        return t

    x, targets = batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, targets)
    return list(records.values())


def measure_saved_bytes(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Total bytes of the distinct storages that ``model(x, targets)`` saves for backward."""
    return sum(r["bytes"] for r in saved_tensors(model, batch))


def devices_needed(n_bytes: float, device_bytes: float) -> int:
    """How many devices of ``device_bytes`` each hold ``n_bytes`` (ignoring everything else)."""
    n_bytes = checks.nonnegative_float("n_bytes", n_bytes)
    device_bytes = checks.positive_float("device_bytes", device_bytes)
    return max(1, math.ceil(n_bytes / device_bytes))

