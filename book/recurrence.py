"""Recurrence against attention: matched sizes, exact FLOP counts, a cached timing.

An LSTM layer and a transformer block (``book.model.Block``) of nearly the same
parameter count do nearly the same FLOPs per token. What differs is the order
the work can be done in:

- the LSTM's step t needs the hidden state of step t-1, so a layer is ``n``
  dependent steps, each a small (batch x h) @ (h x 4h) product;
- the block computes all ``n`` positions of a layer at once, as a few large
  (batch*n x d) @ (d x k) products and one attention call.

This module counts both exactly, times both (forward + backward, float32 on
every device: TF32 matmuls on a GPU, as ``device.setup`` sets), and caches the
timing so that later notebooks reuse it. Lesson 1.1's sizes, by profile, are
``book.experiments.ch01_why_scale.recurrence_setup()``.

FLOP conventions, as in ``book.model``: a multiply-add is 2 FLOPs; only matrix
products are counted (no biases, gate nonlinearities, softmax or norms); the
backward pass costs 2x the forward (gradients w.r.t. inputs and w.r.t.
weights), so training is 3x forward.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from book import checks, hardware, sweep
from book import device as _device
from book.model import Block, GPTConfig
from book.storage import read_json_checked, write_json_atomic

ARCHITECTURES = ("lstm", "block")




# --------------------------------------------------------------------------- sizes


def block_config(d_model: int, n_head: int, seq_len: int = 1) -> GPTConfig:
    """The ``GPTConfig`` of one ``Block`` of width ``d_model`` (d_ff = 4 d_model, with biases).

    A block does not use the vocabulary; ``vocab_size=1`` only satisfies the config.
    """
    return GPTConfig(n_layer=1, d_model=checks.positive_int("d_model", d_model), n_head=checks.positive_int("n_head", n_head),
                     n_ctx=checks.positive_int("seq_len", seq_len), vocab_size=1)


def block_params(d_model: int, bias: bool = True) -> int:
    """Exact parameter count of ``Block`` with d_ff = 4 d_model: 12 d^2 weights, plus 13 d with biases (2 d without).

    Attention: 3d^2 (+3d) and d^2 (+d); MLP: 4d^2 (+4d) and 4d^2 (+d); two LayerNorms: 2d (+2d).
    """
    d = checks.positive_int("d_model", d_model)
    return 12 * d * d + (13 * d if bias else 2 * d)


def lstm_params(input_size: int, hidden_size: int, bias: bool = True) -> int:
    """Exact parameter count of ``nn.LSTM(input_size, hidden_size)`` (one layer):
    4h (input_size + h) weights, plus two bias vectors of 4h (torch keeps b_ih and b_hh)."""
    d_in, h = checks.positive_int("input_size", input_size), checks.positive_int("hidden_size", hidden_size)
    return 4 * h * (d_in + h) + (8 * h if bias else 0)


def matched_lstm_hidden(d_model: int, bias: bool = True) -> int:
    """The hidden size h of an LSTM layer of width h (input h, output h, as in a stack of layers)
    whose parameter count is closest to a ``Block`` of width ``d_model``.

    8h^2 + 8h = 12 d^2 + 13 d gives h ~ sqrt(1.5) d ~ 1.22 d; we take the nearest integer.
    """
    target = block_params(d_model, bias)
    guess = round(math.sqrt(target / 8))  # 8h^2 dominates
    candidates = range(max(1, guess - 2), guess + 3)
    return min(candidates, key=lambda h: (abs(lstm_params(h, h, bias) - target), h))


# --------------------------------------------------------------------------- FLOPs and steps


def lstm_flops_per_token(input_size: int, hidden_size: int, training: bool = False) -> int:
    """Matmul FLOPs of one LSTM layer per token: 2 x 4h (input_size + h) forward.

    Each step multiplies the input by W_ih (4h x input_size) and the previous hidden
    state by W_hh (4h x h): one multiply-add per weight. Left out: the bias adds and
    the gates' sigmoids, tanhs and products (about 10h FLOPs). Training is 3x forward.
    """
    d_in, h = checks.positive_int("input_size", input_size), checks.positive_int("hidden_size", hidden_size)
    forward = 2 * 4 * h * (d_in + h)
    return 3 * forward if training else forward


def block_flops_per_token(d_model: int, seq_len: int, training: bool = False, causal: bool = True) -> int:
    """Matmul FLOPs of one ``Block`` (d_ff = 4 d) per token, at sequence length ``seq_len``.

    Weights: 2 x 12 d^2 (QKV 3d^2, output d^2, MLP 8d^2). Attention: the scores QK^T
    and the weighted sum AV, each n x d x n per sequence. With ``causal`` (default)
    we count only the entries a causal model needs, on or below the diagonal:
    n(n+1)/2 of each product, 2 d (n+1) FLOPs per token. With ``causal=False`` we
    count the full n x n products, 4 n d per token: what the unfused "math"
    attention computes and ``torch.utils.flop_counter`` counts. Training is 3x forward.
    """
    d, n = checks.positive_int("d_model", d_model), checks.positive_int("seq_len", seq_len)
    attention = 2 * d * (n + 1) if causal else 4 * n * d
    forward = 24 * d * d + attention
    return 3 * forward if training else forward


def sequential_steps(architecture: str, seq_len: int, n_layer: int = 1) -> int:
    """Dependent steps in a forward pass over ``seq_len`` positions: how many things must
    happen one after another, however wide the machine.

    LSTM: ``seq_len`` per layer (step t needs step t-1's state). Block: 1 per layer
    (a fixed chain of matmuls and one attention call, each over all positions at once).
    """
    checks.one_of("architecture", architecture, ARCHITECTURES)
    n, layers = checks.positive_int("seq_len", seq_len), checks.positive_int("n_layer", n_layer)
    return layers * (n if architecture == "lstm" else 1)


# --------------------------------------------------------------------------- the explicit recurrence


def lstm_loop(cell: nn.LSTMCell, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Run ``cell`` over the positions of ``x`` (batch, n, input) one at a time: the recurrence written out.

    A teaching version of ``nn.LSTM``, which does the same in one fused kernel
    (cuDNN on a GPU, oneDNN on a CPU). Returns the outputs (batch, n, h) and the final (h, c).
    """
    if not isinstance(cell, nn.LSTMCell):
        raise ValueError(f"cell must be an nn.LSTMCell, got {type(cell).__name__}")
    if x.ndim != 3 or x.shape[-1] != cell.input_size:
        raise ValueError(f"x must have shape (batch, n, {cell.input_size}), got {tuple(x.shape)}")
    if state is None:
        zeros = x.new_zeros(x.shape[0], cell.hidden_size)
        state = (zeros, zeros)
    h, c = state
    outputs = []
    for t in range(x.shape[1]):  # step t cannot start before step t-1 has produced (h, c)
        h, c = cell(x[:, t], (h, c))
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h, c)


class _KernelCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def kernel_calls(fn, match: tuple[str, ...] = ("mm", "attention", "lstm", "rnn")) -> dict[str, int]:
    """Run ``fn()`` and count the aten operators it dispatched whose names contain one of ``match``
    (by default: matrix products, attention and fused RNN kernels)."""
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    with _KernelCalls() as mode:
        fn()
    return {name: count for name, count in sorted(mode.calls.items()) if any(m in name for m in match)}


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Setup:
    """The sizes of the recurrence-against-attention measurement.

    Every length is timed on ``tokens_per_batch`` tokens, as ``tokens_per_batch // seq_len``
    sequences: training fixes the tokens in a batch, so longer sequences mean fewer of them.
    """

    d_model: int
    n_head: int
    tokens_per_batch: int
    seq_lens: tuple[int, ...]

    def __post_init__(self):
        for name in ("d_model", "n_head", "tokens_per_batch"):
            checks.positive_int(name, getattr(self, name))
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        lens = tuple(checks.positive_int("seq_lens[i]", n) for n in self.seq_lens)
        if not lens:
            raise ValueError(f"seq_lens must be a non-empty sequence of positive ints, got {self.seq_lens!r}")
        if list(lens) != sorted(set(lens)):
            raise ValueError(f"seq_lens must be increasing, got {lens}")
        if any(self.tokens_per_batch % n for n in lens):
            raise ValueError(f"tokens_per_batch={self.tokens_per_batch} must be a multiple of every seq_len {lens}")
        object.__setattr__(self, "seq_lens", lens)

    @property
    def hidden(self) -> int:
        """The LSTM's hidden size, matched to the block's parameter count."""
        return matched_lstm_hidden(self.d_model)


def build_models(setup: Setup, dev: torch.device, seed: int = 0) -> tuple[Block, nn.LSTM]:
    """A ``Block`` of width d and an ``nn.LSTM`` of matched width h, float32, on ``dev``."""
    setup = _setup(setup)
    torch.manual_seed(checks.nonnegative_int("seed", seed))
    block = Block(block_config(setup.d_model, setup.n_head, max(setup.seq_lens))).to(dev)
    lstm = nn.LSTM(setup.hidden, setup.hidden, batch_first=True).to(dev)
    return block, lstm


def train_step(model: nn.Module, x: torch.Tensor):
    """A function doing one forward and backward pass of ``model`` on ``x`` (which needs its gradient too,
    as the input of a layer inside a stack does, so the backward pass is complete)."""
    if not x.requires_grad:
        raise ValueError("x must require grad, so that the backward pass computes input gradients too")
    params = list(model.parameters())

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out  # nn.LSTM returns (output, (h, c))
        out.sum().backward()

    return step


def _setup(setup) -> Setup:
    if not isinstance(setup, Setup):
        raise TypeError(f"setup must be a book.recurrence.Setup (lesson 1.1's: "
                        f"book.experiments.ch01_why_scale.recurrence_setup()), got {type(setup).__name__}")
    return setup


def measure(setup: Setup, dev: torch.device | None = None, min_run_time: float = 0.2) -> dict:
    """Time forward + backward of the block and the matched LSTM at every length of ``setup``, now.

    Also times one matmul of the LSTM's per-step shape (batch x h) @ (h x 4h) at each
    batch, and the block's MLP matmul (tokens x d) @ (d x 4d), to compare with.
    FLOP/s are taken against the machine's measured float32 peak.
    """
    setup = _setup(setup)
    min_run_time = checks.positive_float("min_run_time", min_run_time)
    dev = dev or _device.device()
    d, h = setup.d_model, setup.hidden
    peak = hardware.measured_peak("float32", dev)
    block, lstm = build_models(setup, dev)

    def matmul_flops_per_s(m, n, k):
        a, b = torch.randn(m, k, device=dev), torch.randn(k, n, device=dev)
        return hardware.matmul_flops(m, n, k) / hardware.measure_seconds(lambda: a @ b, min(min_run_time, 0.05))

    rows = []
    for n in setup.seq_lens:
        batch = setup.tokens_per_batch // n
        tokens = batch * n
        row = {"seq_len": n, "batch": batch, "tokens": tokens}
        for name, model, width, flops in (
                ("block", block, d, block_flops_per_token(d, n, training=True)),
                ("lstm", lstm, h, lstm_flops_per_token(h, h, training=True))):
            x = torch.randn(batch, n, width, device=dev, requires_grad=True)
            seconds = hardware.measure_seconds(train_step(model, x), min_run_time)
            row |= {f"{name}_seconds": seconds, f"{name}_tokens_per_s": tokens / seconds,
                    f"{name}_flops_per_token": flops, f"{name}_flops_per_s": flops * tokens / seconds,
                    f"{name}_fraction_of_peak": flops * tokens / seconds / peak,
                    f"{name}_sequential_steps": sequential_steps(name, n)}
        row["lstm_step_matmul_flops_per_s"] = matmul_flops_per_s(batch, 4 * h, h)
        rows.append(row)
    return {
        "key": cache_key(setup, dev),
        "device_name": _device.device_name(dev),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "peak_flops_per_s": peak,
        "d_model": d, "hidden": h,
        "block_params": block_params(d), "lstm_params": lstm_params(h, h),
        "block_mlp_matmul_flops_per_s": matmul_flops_per_s(setup.tokens_per_batch, 4 * d, d),
        "rows": rows,
    }


def code_version() -> str:
    """A short hash of the code that decides the measurement: this module and the model's."""
    return sweep.code_version(("recurrence.py", "model.py"))


def cache_key(setup: Setup, dev: torch.device) -> dict:
    """What a cached measurement must match to be reused: device, sizes, code and torch version."""
    key = {"device": dev.type, "device_name": _device.device_name(dev), "setup": asdict(setup),
           "code": code_version(), "torch": torch.__version__}
    return json.loads(json.dumps(key))  # as it reads back from JSON (tuples become lists)


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return _device.cache_dir() / f"recurrence-{digest}.json"


def load_or_measure(setup: Setup, dev: torch.device | None = None, refresh: bool = False,
                    min_run_time: float = 0.2) -> dict:
    """The measurement for ``setup`` on ``dev``: from the cache when its key matches, else measured now
    and cached (written atomically). ``refresh=True`` measures again.

    The cache is read as ``book.hardware`` reads the machine's peaks (``book.storage.read_json_checked``):
    a file that does not parse, or whose key or rows are not this measurement's, is moved aside with a
    warning and measured again.
    """
    setup = _setup(setup)
    dev = dev or _device.device()
    key = cache_key(setup, dev)
    path = cache_path(key)

    def validate(cached) -> None:
        if cached["key"] != key:
            raise ValueError("its key is not this measurement's")
        if [row["seq_len"] for row in cached["rows"]] != list(setup.seq_lens):
            raise ValueError("its rows are not this setup's lengths")

    cached = None if refresh else read_json_checked(path, validate)
    if cached is not None:
        return cached
    result = measure(setup, dev, min_run_time)
    write_json_atomic(path, result)
    return json.loads(path.read_text())
