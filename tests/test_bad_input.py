"""Bad input gets a clear answer: property-based tests of the public API with Hypothesis.

Two tables, one row per argument (or per function). To cover a new function, append rows:

- ``INVALID``: ``Row(call, valid_kwargs, arg, invalid_values)``. ``call(**valid_kwargs)`` must be a
  valid call; with ``arg`` replaced by any value ``invalid_values`` draws, the call must raise
  ``ValueError`` or ``TypeError`` from ``book`` (not from torch or numpy) with ``arg`` in the message.
- ``FINITE``: ``Finite(call, kwarg_strategies)``. Any call with finite, valid-looking arguments drawn
  from the strategies either returns finite real numbers (tensors, arrays, lists and dicts of them
  are searched) or refuses with ``ValueError``/``TypeError`` naming one of its arguments; never
  inf, nan or a complex number.

The strategies below (``int_below``, ``float_outside``, ``not_in``, ...) build the invalid values.
Keep each row cheap: the valid call should fail fast on a bad argument, before any real work.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from book import attention, chinchilla, data, deepnets, delayed_copy, device, fit, frontier, hardware, kaplan, measure
from book import batch, checklist, inference, memory, moe, parallel, quantize, recompute, recurrence, show, sweep
from book.parallel import pipeline as pipeline_parallel
from book.parallel import tensor as tensor_parallel
from book.experiments import ch01_why_scale, ch02_kaplan, ch03_chinchilla, ch04_moe, ch05_attention
from book.experiments import ch06_cost_of_scale
from book.model import ATTENTIONS, GPT, GPTConfig, count_params, flops_per_token, layer_matmuls
from book.moe import ROUTINGS
from book.train import TrainConfig, lr_at, train

BOOK = Path(__file__).resolve().parent.parent / "book"
# No example database: nothing is written to the checkout, and every run draws afresh from a fixed seed.
SETTINGS = settings(max_examples=10, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- strategies of invalid values

NOT_A_NUMBER = st.one_of(st.booleans(), st.text(max_size=2), st.none(), st.complex_numbers(max_magnitude=10),
                         st.lists(st.integers(), max_size=2))
NOT_INT = st.one_of(NOT_A_NUMBER.filter(lambda v: v is not None), st.floats())
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def int_below(low: int, none_ok: bool = True) -> st.SearchStrategy:
    """Ints < ``low``, and values that are not ints (``None`` too unless ``none_ok``: optional args)."""
    others = NOT_INT if none_ok else st.one_of(NOT_INT, st.none())
    return st.one_of(st.integers(max_value=low - 1), others)


def float_outside(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                  high_open: bool = False) -> st.SearchStrategy:
    """Reals outside [low, high] (an open end excludes that end too), non-finite values, non-numbers."""
    parts = [NON_FINITE, NOT_A_NUMBER.filter(lambda v: v is not None)]
    if low is not None:
        parts.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False))
    if high is not None:
        parts.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False))
    return st.one_of(parts)


def not_in(allowed) -> st.SearchStrategy:
    """Strings (and other values) that are not among ``allowed``."""
    return st.one_of(st.text(max_size=8).filter(lambda s: s not in allowed), st.integers(), st.none())


def not_instance_of(cls) -> st.SearchStrategy:
    values = st.one_of(st.none(), st.integers(), st.text(max_size=3),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
    return values.filter(lambda v: not isinstance(v, cls))


def tensors(*values: torch.Tensor) -> st.SearchStrategy:
    return st.sampled_from(list(values))


class Row(NamedTuple):
    call: Callable
    kwargs: dict
    arg: str
    invalid: st.SearchStrategy

    def __repr__(self):
        return f"{getattr(self.call, '__qualname__', self.call)}-{self.arg}"


class Finite(NamedTuple):
    call: Callable
    strategies: dict

    def __repr__(self):
        return f"{getattr(self.call, '__qualname__', self.call)}"


# --------------------------------------------------------------------------- fixtures the rows share

_GPT_BASE = dict(n_layer=1, d_model=32, n_head=4, n_ctx=8, vocab_size=10)
_TINY = GPT(GPTConfig(**_GPT_BASE)).eval()
_IDS = torch.zeros(2, 4, dtype=torch.long)
_DATASET = data.TokenDataset(torch.arange(64) % 8, torch.arange(32) % 8, 8)
_TRAIN = TrainConfig(steps=10, batch_size=8)
_RUN = sweep.Run("r", GPTConfig(**_GPT_BASE), TrainConfig(steps=1, batch_size=1))
_SETUP = recurrence.Setup(d_model=8, n_head=2, tokens_per_batch=8, seq_lens=(8,))
_ISOFLOP = dict(C=[1e9] * 3 + [1e10] * 3, N=[1.0, 2.0, 4.0] * 2, loss=[1.0, 0.5, 1.0] * 2, n_bootstrap=0)
_RESULT = {"run": "r", "params": 10, "curve": [{"step": 0, "tokens": 0, "val_loss": 2.0},
                                                {"step": 1, "tokens": 8, "train_loss": 1.5, "val_loss": 1.4}]}


def _forward(idx=_IDS, targets=None):
    return _TINY(idx, targets)


def _generate(idx=_IDS, max_new_tokens=1, temperature=1.0, top_k=None):
    return _TINY.generate(idx, max_new_tokens, temperature, top_k, generator=torch.Generator().manual_seed(0))


def _char_decode(ids):
    return data.CharTokenizer("ab").decode(ids)


def _char_encode(text):
    return data.CharTokenizer("ab").encode(text)


def _byte_decode(ids):
    return data.ByteTokenizer().decode(ids)


def _markov_sample(n_tokens=10, seed=0):
    return data.MarkovSource(vocab_size=4).sample(n_tokens, seed=seed)


def _train(**kwargs):
    return train(**(dict(model_config=GPTConfig(**_GPT_BASE), train_config=_TRAIN, data=_DATASET,
                         progress=False) | kwargs))


def _run_sweep(**kwargs):
    return sweep.run_sweep(**(dict(runs=[_RUN], data=_DATASET, sweep="x", progress=False) | kwargs))


_BAD_IDS = tensors(torch.zeros(2, 4), torch.full((2, 4), 10), torch.full((2, 4), -1), torch.zeros(2, 4).bool(),
                   torch.zeros(8, dtype=torch.long), torch.zeros(1, 2, 4, dtype=torch.long),
                   torch.zeros(1, 9, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))
_BAD_SPLIT = st.one_of(tensors(torch.zeros(8), torch.tensor([0, 8]), torch.tensor([-1, 0]), torch.ones(4).bool(),
                               torch.zeros(2, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
                       st.lists(st.integers(0, 7), max_size=3))

# --------------------------------------------------------------------------- INVALID: append rows here

_SMALL_GPT = GPT(GPTConfig(n_layer=1, d_model=8, n_head=2, n_ctx=8, vocab_size=5)).eval()

INVALID: list[Row] = [
    # book.train
    *[Row(TrainConfig, dict(steps=10, batch_size=8), name, int_below(1, none_ok=False))
      for name in ("steps", "batch_size", "grad_accum", "eval_batches")],
    Row(TrainConfig, dict(steps=10, batch_size=8), "lr", float_outside(0, low_open=True)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "min_lr_ratio", float_outside(0, 1)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "weight_decay", float_outside(0)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "beta1", float_outside(0, 1, high_open=True)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "beta2", float_outside(0, 1, high_open=True)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "grad_clip", float_outside(0, low_open=True)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "seed", int_below(0, none_ok=False)),
    Row(TrainConfig, dict(steps=10, batch_size=8), "warmup_steps", int_below(0)),
    *[Row(TrainConfig, dict(steps=10, batch_size=8), name, int_below(1))
      for name in ("eval_every", "log_every", "schedule_steps")],
    Row(lr_at, dict(step=3, cfg=_TRAIN), "step", int_below(0, none_ok=False)),
    Row(lr_at, dict(step=3, cfg=_TRAIN), "cfg", not_instance_of(TrainConfig)),
    Row(_train, {}, "train_config", not_instance_of(TrainConfig)),
    Row(_train, {}, "data", not_instance_of(data.TokenDataset)),
    Row(_train, {}, "checkpoint_every", int_below(1)),
    # book.sweep
    Row(sweep.Run, dict(name="r", model=_RUN.model, train=_RUN.train), "name",
        st.one_of(st.sampled_from(["", "a b", "a/b", "../x"]), st.none(), st.integers())),
    Row(sweep.Run, dict(name="r", model=_RUN.model, train=_RUN.train), "model", not_instance_of(GPTConfig)),
    Row(sweep.Run, dict(name="r", model=_RUN.model, train=_RUN.train), "train", not_instance_of(TrainConfig)),
    Row(_run_sweep, {}, "runs", st.one_of(st.just([]), st.none(), st.lists(st.integers(), min_size=1, max_size=2))),
    Row(_run_sweep, {}, "data", not_instance_of(data.TokenDataset)),
    Row(_run_sweep, {}, "sweep", st.sampled_from(["", "a/b", "a b", "../up"])),
    Row(_run_sweep, {}, "checkpoint_every", int_below(1)),
    # book.data
    Row(data.TokenDataset, dict(train=torch.arange(4), val=torch.arange(4), vocab_size=8), "train", _BAD_SPLIT),
    Row(data.TokenDataset, dict(train=torch.arange(4), val=torch.arange(4), vocab_size=8), "val", _BAD_SPLIT),
    Row(data.TokenDataset, dict(train=torch.arange(4), val=torch.arange(4), vocab_size=8), "vocab_size",
        st.one_of(int_below(1, none_ok=False), st.integers(1, 3))),  # 1..3: ids up to 3 do not fit
    Row(data.TokenDataset, dict(train=torch.arange(4), val=torch.arange(4), vocab_size=8), "entropy_rate",
        float_outside(0)),
    Row(data.get_batch, dict(tokens=torch.arange(20), batch_size=2, n_ctx=4), "batch_size", int_below(1, False)),
    Row(data.get_batch, dict(tokens=torch.arange(20), batch_size=2, n_ctx=4), "n_ctx", int_below(1, False)),
    Row(data.get_batch, dict(tokens=torch.arange(20), batch_size=2, n_ctx=4), "tokens",
        st.one_of(st.lists(st.integers(), max_size=3), tensors(torch.zeros(4, 5, dtype=torch.long)))),
    Row(data.CharTokenizer, dict(alphabet="ab"), "alphabet", st.one_of(st.just(""), not_instance_of(str))),
    Row(_char_decode, dict(ids=[0]), "ids",
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2), st.floats(), st.text(min_size=1))
        .map(lambda v: [v])),
    Row(_char_encode, dict(text="ab"), "text", st.one_of(st.none(), st.integers(), st.lists(st.text()))),
    Row(_byte_decode, dict(ids=[65]), "ids",
        st.one_of(st.integers(max_value=-1), st.integers(min_value=256), st.floats()).map(lambda v: [v])),
    Row(data.MarkovSource, dict(vocab_size=4), "vocab_size", int_below(2, none_ok=False)),
    Row(data.MarkovSource, dict(vocab_size=4), "order", st.one_of(int_below(1, False), st.integers(12, 10**9))),
    Row(data.MarkovSource, dict(vocab_size=4), "n_successors",
        st.one_of(int_below(1, False), st.integers(min_value=5))),
    Row(data.MarkovSource, dict(vocab_size=4), "smoothing", float_outside(0, 1, low_open=True, high_open=True)),
    Row(data.MarkovSource, dict(vocab_size=4), "concentration", float_outside(0, low_open=True)),
    Row(data.MarkovSource, dict(vocab_size=4), "seed", int_below(0, none_ok=False)),
    Row(_markov_sample, {}, "n_tokens", int_below(2, none_ok=False)),
    Row(_markov_sample, {}, "seed", int_below(0, none_ok=False)),
    Row(data.load_shakespeare, {}, "tokenizer", not_in(("char", "byte"))),
    Row(data.load_shakespeare, {}, "val_fraction", float_outside(0, 1, low_open=True, high_open=True)),
    Row(data.dataset_from_text, dict(text="abcd"), "text", st.one_of(st.text(max_size=1), st.none(), st.integers())),
    Row(data.dataset_from_text, dict(text="abcd"), "val_fraction",
        float_outside(0, 1, low_open=True, high_open=True)),
    Row(data.dataset_from_text, dict(text="abcd"), "tokenizer", not_in(("char", "byte"))),
    # book.hardware
    *[Row(hardware.matmul_flops, dict(m=2, n=3, k=4), name, int_below(1, False)) for name in "mnk"],
    *[Row(hardware.matmul_intensity, dict(m=2, n=3, k=4), name, int_below(1, False))
      for name in ("m", "n", "k", "bytes_per_element")],
    Row(hardware.roofline, dict(intensity=1.0, peak_flops=1e12, bandwidth=1e9), "intensity",
        st.one_of(st.floats(max_value=0, exclude_max=True), NON_FINITE,
                  st.just([1.0, math.nan]), st.just(np.array([-1.0, 2.0])), st.text(max_size=2),
                  st.none())),
    Row(hardware.roofline, dict(intensity=1.0, peak_flops=1e12, bandwidth=1e9), "peak_flops",
        float_outside(0, low_open=True)),
    Row(hardware.roofline, dict(intensity=1.0, peak_flops=1e12, bandwidth=1e9), "bandwidth",
        float_outside(0, low_open=True)),
    Row(hardware.accelerator, dict(name="A100"), "name", not_in(hardware.ACCELERATORS)),
    Row(hardware.accelerator("A100").peak, dict(dtype="float32"), "dtype", not_in(("float32", "tf32", "bfloat16",
                                                                                   "float16"))),
    Row(hardware.measure_seconds, dict(fn=lambda: None), "min_run_time", float_outside(0, low_open=True)),
    Row(hardware.measure_seconds, dict(fn=lambda: None), "fn", st.one_of(st.none(), st.integers())),
    Row(hardware.measure_matmul, dict(n=4), "n", int_below(1, False)),
    Row(hardware.measure_matmul, dict(n=4), "dtype", not_in(("float32", "bfloat16", "float16"))),
    Row(hardware.measure_bandwidth, {}, "n_bytes", st.one_of(st.integers(max_value=2**20 - 1), NOT_INT)),
    Row(hardware.measure_peaks, dict(dev=torch.device("cpu"), sizes=[4]), "repeats", int_below(1, False)),
    Row(hardware.measure_peaks, dict(dev=torch.device("cpu")), "sizes",
        st.lists(int_below(1, False), min_size=1, max_size=2)),
    Row(hardware.training_flops, dict(n_params=1e6, n_tokens=1e9), "n_params", float_outside(0, low_open=True)),
    Row(hardware.training_flops, dict(n_params=1e6, n_tokens=1e9), "n_tokens", float_outside(0, low_open=True)),
    Row(hardware.accelerator_hours, dict(flops=1e20, peak_flops_per_s=1e15), "flops", float_outside(0)),
    Row(hardware.accelerator_hours, dict(flops=1e20, peak_flops_per_s=1e15), "peak_flops_per_s",
        float_outside(0, low_open=True)),
    Row(hardware.accelerator_hours, dict(flops=1e20, peak_flops_per_s=1e15), "mfu",
        float_outside(0, 1, low_open=True)),
    # book.model
    *[Row(GPTConfig, _GPT_BASE, name, int_below(1, False))
      for name in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size", "moe_every", "attention_window",
                   "flash_block", "linear_chunk", "lsh_rounds")],
    Row(GPTConfig, _GPT_BASE, "d_ff", int_below(1)),
    Row(GPTConfig, _GPT_BASE, "lsh_chunk", int_below(1)),
    Row(GPTConfig, _GPT_BASE, "lsh_buckets", st.one_of(int_below(1, False), st.integers(1, 50).map(lambda i: 2 * i + 1))),
    Row(GPTConfig, _GPT_BASE, "bias", st.one_of(st.integers(), st.none(), st.text(max_size=2))),
    Row(GPTConfig, _GPT_BASE, "tie_embeddings", st.one_of(st.integers(), st.none(), st.text(max_size=2))),
    Row(GPTConfig, _GPT_BASE, "dropout", float_outside(0, 1, high_open=True)),
    Row(GPTConfig, _GPT_BASE, "n_experts", int_below(0, False)),
    Row(GPTConfig, _GPT_BASE | dict(n_experts=4), "expert_k", st.one_of(int_below(1, False), st.integers(5))),
    Row(GPTConfig, _GPT_BASE, "capacity_factor", float_outside(0, low_open=True)),
    Row(GPTConfig, _GPT_BASE, "routing", not_in(ROUTINGS)),
    Row(GPTConfig, _GPT_BASE, "aux_loss_coef", float_outside(0)),
    Row(GPTConfig, _GPT_BASE, "z_loss_coef", float_outside(0)),
    Row(GPTConfig, _GPT_BASE, "attention", not_in(ATTENTIONS)),
    Row(count_params, dict(cfg=_TINY.config), "cfg", not_instance_of(GPTConfig)),
    Row(flops_per_token, dict(cfg=_TINY.config), "cfg", not_instance_of(GPTConfig)),
    Row(layer_matmuls, dict(cfg=_TINY.config, batch_size=2), "cfg", not_instance_of(GPTConfig)),
    Row(layer_matmuls, dict(cfg=_TINY.config, batch_size=2), "batch_size", int_below(1, False)),
    Row(_forward, {}, "idx", st.one_of(_BAD_IDS, st.lists(st.integers(0, 9), max_size=3))),
    Row(_forward, {}, "targets", tensors(torch.zeros(2, 4), torch.full((2, 4), 10), torch.full((2, 4), -1),
                                         torch.zeros(2, 3, dtype=torch.long))),
    Row(_generate, {}, "max_new_tokens", int_below(0, False)),
    Row(_generate, {}, "temperature", float_outside(0, low_open=True)),
    Row(_generate, {}, "top_k", int_below(1)),
    Row(_generate, {}, "idx", tensors(torch.zeros(2, 4), torch.full((2, 4), 10), torch.full((2, 4), -1),
                                      torch.zeros(8, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))),
    # book.device
    Row(device.seed_everything, dict(seed=0), "seed", int_below(0, False)),
    Row(device.setup, dict(seed=0), "seed", int_below(0)),
    # the ideas: book.kaplan, chinchilla, frontier, fit, moe, attention, deepnets, recurrence, delayed_copy
    *[Row(kaplan.loss_of_n, dict(N=1e6), name, float_outside(0, low_open=True)) for name in ("N", "N_c", "alpha_N")],
    *[Row(kaplan.loss_of_d, dict(D=1e6), name, float_outside(0, low_open=True)) for name in ("D", "D_c", "alpha_D")],
    Row(kaplan.overfit_data_bound, dict(N=1e6), "exponent", float_outside(0, low_open=True)),
    *[Row(kaplan.kaplan_n, dict(n_layer=2, d_model=8), name, int_below(1, False)) for name in ("n_layer", "d_model")],
    Row(kaplan.kaplan_n, dict(n_layer=2, d_model=8), "d_ff", int_below(1)),
    Row(kaplan.counted_flops_per_token, dict(cfg=_TINY.config), "batch_size", int_below(1, False)),
    Row(kaplan.counted_flops_per_token, dict(cfg=_TINY.config), "device", not_in(("cpu", "cuda", "meta"))),
    Row(chinchilla.fit_parabola, dict(N=[1.0, 2.0, 4.0], loss=[1.0, 0.5, 1.0]), "N",
        st.sampled_from([[1.0, 2.0, -4.0], [0.0, 1.0, 2.0], [1.0, 2.0, math.nan], "abc"])),
    Row(chinchilla.isoflop_frontier, _ISOFLOP, "C", st.sampled_from([[0.0] * 6, [-1.0] * 6, [math.inf] * 6])),
    Row(chinchilla.isoflop_frontier, _ISOFLOP, "exterior", not_in(("drop", "keep"))),
    Row(chinchilla.isoflop_frontier, _ISOFLOP, "nearest", st.one_of(int_below(3), st.floats())),
    Row(chinchilla.isoflop_frontier, _ISOFLOP, "n_bootstrap", int_below(0, False)),
    Row(chinchilla.allocate, dict(fit=chinchilla.HOFFMANN_FIT, flops=1e20), "flops", float_outside(0, low_open=True)),
    Row(chinchilla.allocate, dict(fit=chinchilla.HOFFMANN_FIT, flops=1e20), "mfu", float_outside(0, 1, low_open=True)),
    Row(chinchilla.allocate, dict(fit=chinchilla.HOFFMANN_FIT, flops=1e20), "n_accelerators", int_below(1, False)),
    Row(chinchilla.allocate, dict(fit=chinchilla.HOFFMANN_FIT, flops=1e20), "fit",
        not_instance_of(chinchilla.ChinchillaFit)),
    Row(chinchilla.tokens_for_loss, dict(fit=chinchilla.HOFFMANN_FIT, N=1e9, loss=2.0), "N",
        float_outside(0, low_open=True)),
    Row(chinchilla.inference_aware_optimum, dict(fit=chinchilla.HOFFMANN_FIT, loss=2.0, inference_tokens=0.0),
        "inference_tokens", float_outside(0)),
    Row(frontier.token_curve, dict(result=_RESULT, loss="train_loss"), "loss", not_in(frontier.LOSSES)),
    Row(frontier.envelope, dict(results=[_RESULT]), "n_grid", int_below(1, False)),
    Row(frontier.envelope, dict(results=[_RESULT]), "start_fraction", float_outside(0, 1, high_open=True)),
    Row(frontier.lower_envelope, dict(curves=[([1.0, 2.0], [1.0, 0.5])], budgets=[1.0, 2.0]), "budgets",
        st.sampled_from([[2.0, 1.0], [0.0, 1.0], [], [1.0, math.nan]])),
    Row(fit.fit_exponent, dict(x=[1, 2, 4], y=[1, 2, 4], n_bootstrap=0, seed=0), "n_bootstrap",
        int_below(0, False)),
    Row(fit.fit_exponent, dict(x=[1, 2, 4], y=[1, 2, 4], n_bootstrap=0, seed=0), "seed", int_below(0, False)),
    Row(fit.bootstrap_indices, dict(n_points=3, n_bootstrap=2, seed=0), "n_points", int_below(1, False)),
    Row(fit.bootstrap_intervals, dict(samples=[[1.0]], names=["a"]), "level",
        float_outside(0, 1, low_open=True, high_open=True)),
    *[Row(moe.expert_capacity, dict(n_tokens=16, n_experts=4, k=2, capacity_factor=1.0), name, int_below(1, False))
      for name in ("n_tokens", "n_experts", "k")],
    Row(moe.expert_capacity, dict(n_tokens=16, n_experts=4, k=2, capacity_factor=1.0), "capacity_factor",
        float_outside(0, low_open=True)),
    Row(moe.training_bytes, dict(n_params=1e6), "n_params", float_outside(0, low_open=True)),
    Row(moe.serving_bytes, dict(n_params=1e6), "bytes_per_param", float_outside(0, low_open=True)),
    *[Row(attention.attention_flops, dict(n=8, d_head=4, n_heads=2), name, int_below(1, False))
      for name in ("n", "d_head", "n_heads", "batch")],
    *[Row(deepnets.DeepStack, dict(n_layer=2, width=4), name, int_below(1, False)) for name in ("n_layer", "width")],
    Row(deepnets.DeepStack, dict(n_layer=2, width=4), "variant", not_in(deepnets.VARIANTS)),
    Row(deepnets.DeepStack, dict(n_layer=2, width=4), "init", not_in(deepnets.INITS)),
    Row(recurrence.block_params, dict(d_model=8), "d_model", int_below(1, False)),
    Row(recurrence.lstm_params, dict(input_size=4, hidden_size=4), "hidden_size", int_below(1, False)),
    Row(recurrence.sequential_steps, dict(architecture="lstm", seq_len=8), "architecture",
        not_in(recurrence.ARCHITECTURES)),
    Row(recurrence.build_models, dict(setup=_SETUP, dev="cpu"), "setup", not_instance_of(recurrence.Setup)),
    Row(delayed_copy.copy_entropy, dict(n_values=16, p_fresh=0.2), "n_values", int_below(2, False)),
    Row(delayed_copy.copy_ceiling, dict(n_values=16, p_fresh=0.2), "p_fresh", float_outside(0, 1, low_open=True)),
    *[Row(delayed_copy.copy_floor, dict(n_values=16, lag=4, p_fresh=0.2, n_ctx=16), name, int_below(1, False))
      for name in ("lag", "n_ctx")],
    Row(delayed_copy.copy_floor, dict(n_values=16, lag=4, p_fresh=0.2, n_ctx=16), "window", int_below(1)),
    Row(measure.random_qkv, dict(n=4), "n", int_below(1, False)),
    Row(measure.random_qkv, dict(n=4), "seed", int_below(0, False)),
    Row(show.source, dict(obj=kaplan.kaplan_n), "obj", st.one_of(st.integers(), st.none(), st.text(max_size=3))),
    Row(show.source, dict(obj=kaplan.kaplan_n), "docstring", st.one_of(st.integers(), st.none(), st.text())),
    # the experiments
    Row(ch01_why_scale.residual_paths_config, dict(lr=1e-3), "lr", float_outside(0, low_open=True)),
    Row(ch02_kaplan.shape_sweep, dict(vocab_size=81), "vocab_size", int_below(1, False)),
    Row(ch03_chinchilla.lr_for_width, dict(d_model=8), "d_model", int_below(1, False)),
    Row(ch03_chinchilla.partition, dict(runs=[], workers=2), "workers", int_below(1, False)),
    Row(ch03_chinchilla.isoflop_run, dict(C=2e9, d_model=8, vocab_size=81), "C", float_outside(0, low_open=True)),
    Row(ch04_moe.balance_runs, dict(vocab_size=81), "vocab_size", int_below(1, False)),
    Row(ch05_attention.shakespeare_runs, dict(vocab_size=81), "vocab_size", int_below(1, False)),
    *[Row(fn, dict(vocab_size=81), "vocab_size", int_below(1, False))
      for fn in (ch06_cost_of_scale.memory_step, ch06_cost_of_scale.precision_runs, ch06_cost_of_scale.recompute_step,
                 ch06_cost_of_scale.segments_step, ch06_cost_of_scale.batch_runs, ch06_cost_of_scale.noise_runs)],
    # chapter 6: memory, batch size, recomputation
    Row(memory.training_bytes, dict(n_params=10), "n_params", int_below(1, False)),
    Row(memory.training_bytes, dict(n_params=10), "optimizer", not_in(memory.OPTIMIZERS)),
    Row(memory.training_bytes, dict(n_params=10), "precision", not_in(memory.PRECISIONS)),
    Row(memory.zero_bytes_per_device, dict(n_params=10, n_devices=2, stage=1), "n_devices", int_below(1, False)),
    Row(memory.zero_bytes_per_device, dict(n_params=10, n_devices=2, stage=1), "stage",
        st.one_of(st.integers().filter(lambda v: v not in memory.STAGES), st.text(max_size=2), st.none())),
    *[Row(memory.activation_bytes, dict(config=GPTConfig(1, 8, 2, 16, 5), batch_size=2, seq_len=4), name,
          int_below(1, False)) for name in ("batch_size", "seq_len")],
    *[Row(memory.megatron_activation_bytes, dict(seq_len=8, batch_size=1, d_model=16, n_head=2), name,
          int_below(1, False)) for name in ("seq_len", "batch_size", "d_model", "n_head")],
    Row(memory.devices_needed, dict(n_bytes=1e9, device_bytes=8e10), "device_bytes", float_outside(0, low_open=True)),
    Row(memory.devices_needed, dict(n_bytes=1e9, device_bytes=8e10), "n_bytes", float_outside(0)),
    Row(batch.gradient_noise_scale, dict(grads=torch.ones(3, 4), batch_size=2), "batch_size", int_below(1, False)),
    Row(batch.fit_steps_examples, dict(steps=[100.0, 60.0, 40.0], examples=[400.0, 480.0, 640.0]), "n_bootstrap",
        int_below(0, False)),
    Row(lambda k: recompute.checkpoint_every(GPT(GPTConfig(1, 8, 2, 8, 5)), k), dict(k=1), "k", int_below(1, False)),
    Row(lambda length: recompute.checkpoint_segments(GPT(GPTConfig(1, 8, 2, 8, 5)), length), dict(length=1),
        "length", int_below(1, False)),
    *[Row(fn, dict(n_bytes=1e6, n_ranks=4), "n_bytes", float_outside(0))
      for fn in (parallel.allreduce_bytes, parallel.reduce_scatter_bytes)],
    *[Row(fn, dict(n_bytes=1e6, n_ranks=4), "n_ranks", int_below(1, False))
      for fn in (parallel.allreduce_bytes, parallel.reduce_scatter_bytes)],
    Row(parallel.pipeline_bubble, dict(n_stages=4, n_microbatches=8), "n_stages", int_below(1, False)),
    Row(parallel.pipeline_bubble, dict(n_stages=4, n_microbatches=8), "n_microbatches", int_below(1, False)),
    # chapter 6, part 2: inference, quantization, the checklist, tensor and pipeline parallelism
    *[Row(inference.kv_cache_bytes, dict(n_layer=2, n_kv_heads=2, d_head=8, n_tokens=16), name, int_below(1, False))
      for name in ("n_layer", "n_kv_heads", "d_head", "batch_size", "bytes_per_value")],
    Row(inference.kv_cache_bytes, dict(n_layer=2, n_kv_heads=2, d_head=8, n_tokens=16), "n_tokens",
        int_below(0, False)),
    Row(inference.expected_tokens_per_step, dict(alpha=0.5, gamma=4), "alpha", float_outside(0, 1)),
    Row(inference.expected_tokens_per_step, dict(alpha=0.5, gamma=4), "gamma", int_below(1, False)),
    Row(lambda gamma: inference.speculative_generate(_SMALL_GPT, _SMALL_GPT, torch.zeros(1, 2, dtype=torch.long),
                                                     4, gamma), dict(gamma=2), "gamma", int_below(1, False)),
    Row(lambda max_new_tokens: inference.generate(_SMALL_GPT, torch.zeros(1, 2, dtype=torch.long), max_new_tokens),
        dict(max_new_tokens=2), "max_new_tokens", int_below(0, False)),
    Row(quantize.quantize_per_channel, dict(weight=torch.ones(3, 4)), "weight", not_instance_of(torch.Tensor)),
    Row(checklist.loader_keeps_up, dict(loader_seconds=0.1, step_seconds=1.0), "step_seconds",
        float_outside(0, low_open=True)),
    Row(checklist.loader_keeps_up, dict(loader_seconds=0.1, step_seconds=1.0), "loader_seconds", float_outside(0)),
    Row(checklist.data_balance, dict(n_params=1e6, n_tokens=2e7), "n_params", float_outside(0, low_open=True)),
    Row(pipeline_parallel.split_layers, dict(n_layer=4, n_stages=2), "n_stages", int_below(1, False)),
    Row(pipeline_parallel.gpipe_schedule, dict(n_stages=2, n_microbatches=4), "n_microbatches", int_below(1, False)),
    Row(tensor_parallel.shard, dict(n=8, rank=0, world=2), "world", int_below(1, False)),
]


@pytest.mark.parametrize("row", INVALID, ids=repr)
@SETTINGS
@given(draw=st.data())
def test_an_invalid_argument_is_refused_by_name(row, draw):
    value = draw.draw(row.invalid, label=row.arg)
    with pytest.raises((ValueError, TypeError)) as info:
        row.call(**(row.kwargs | {row.arg: value}))
    raised_in = Path(str(info.traceback[-1].path))
    assert BOOK in raised_in.parents, f"raised outside book/, in {raised_in}: {info.value!r}"
    assert row.arg in str(info.value), f"the message does not name {row.arg!r}: {info.value}"


@pytest.mark.parametrize("row", INVALID, ids=repr)
def test_the_valid_call_of_each_row_is_valid(row):
    # Guards the table: a row whose "valid" call fails would pass its invalid test for the wrong reason.
    if row.call in (data.load_shakespeare, hardware.measure_peaks, hardware.measure_bandwidth, _train,
                    _run_sweep, device.setup, device.seed_everything, hardware.measure_seconds,
                    hardware.measure_matmul):
        pytest.skip("valid call does real work (reads the corpus, measures, trains, or seeds the session)")
    row.call(**row.kwargs)


# --------------------------------------------------------------------------- FINITE: append rows here

POSITIVE_FLOAT = st.floats(min_value=1e-300, max_value=1e300)
POSITIVE_INT = st.integers(min_value=1, max_value=2**40)

FINITE: list[Finite] = [
    Finite(hardware.matmul_flops, dict(m=POSITIVE_INT, n=POSITIVE_INT, k=POSITIVE_INT)),
    Finite(hardware.matmul_intensity, dict(m=POSITIVE_INT, n=POSITIVE_INT, k=POSITIVE_INT,
                                           bytes_per_element=st.integers(1, 16))),
    Finite(hardware.roofline, dict(intensity=st.floats(0, 1e300), peak_flops=POSITIVE_FLOAT,
                                   bandwidth=POSITIVE_FLOAT)),
    Finite(hardware.training_flops, dict(n_params=POSITIVE_FLOAT, n_tokens=POSITIVE_FLOAT)),
    Finite(hardware.accelerator_hours, dict(flops=st.floats(0, 1e300), peak_flops_per_s=POSITIVE_FLOAT,
                                            mfu=st.floats(1e-300, 1.0))),
    Finite(lambda step, cfg: lr_at(step, cfg),
           dict(step=st.integers(0, 10**6),
                cfg=st.builds(TrainConfig, steps=st.integers(1, 10**6), batch_size=st.just(1),
                              lr=st.floats(1e-12, 10.0), min_lr_ratio=st.floats(0, 1),
                              warmup_steps=st.one_of(st.none(), st.integers(0, 10**6))))),
    Finite(lambda **kw: data.MarkovSource(**kw).entropy_rate,
           dict(vocab_size=st.integers(2, 12), order=st.integers(1, 2), n_successors=st.integers(1, 2),
                smoothing=st.floats(1e-3, 0.999), concentration=st.floats(1e-3, 1e3), seed=st.integers(0, 99))),
    Finite(moe.expert_capacity, dict(n_tokens=POSITIVE_INT, n_experts=st.integers(1, 64), k=st.just(1),
                                     capacity_factor=POSITIVE_FLOAT)),
    Finite(delayed_copy.copy_floor, dict(n_values=st.integers(2, 10**6), lag=st.integers(1, 10**6),
                                         p_fresh=st.floats(1e-300, 1.0), n_ctx=st.integers(1, 10**6))),
    Finite(lambda idx: _forward(idx)[0], dict(idx=st.lists(st.integers(0, 9), min_size=8, max_size=8).map(
        lambda ids: torch.tensor(ids).view(2, 4)))),
    Finite(memory.zero_bytes_per_device, dict(n_params=POSITIVE_INT, n_devices=POSITIVE_INT,
                                              stage=st.sampled_from(memory.STAGES))),
    Finite(memory.megatron_activation_bytes, dict(seq_len=POSITIVE_INT, batch_size=POSITIVE_INT,
                                                  d_model=POSITIVE_INT, n_head=POSITIVE_INT)),
    Finite(parallel.allreduce_bytes, dict(n_bytes=st.floats(0, 1e308), n_ranks=POSITIVE_INT)),
    Finite(parallel.pipeline_bubble, dict(n_stages=POSITIVE_INT, n_microbatches=POSITIVE_INT)),
    Finite(inference.expected_tokens_per_step, dict(alpha=st.floats(0, 1), gamma=st.integers(1, 10**6))),
    Finite(inference.kv_cache_bytes, dict(n_layer=POSITIVE_INT, n_kv_heads=POSITIVE_INT, d_head=POSITIVE_INT,
                                          n_tokens=POSITIVE_INT)),
]


def _numbers(value):
    """Every number inside ``value`` (tensors, arrays, sequences, dicts), for the finiteness check."""
    if isinstance(value, torch.Tensor):
        yield from value.detach().double().flatten().tolist() if not value.is_complex() else [complex(1j)]
    elif isinstance(value, np.ndarray):
        yield from (value.astype(complex) if np.iscomplexobj(value) else value.astype(float)).ravel().tolist()
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float, complex, np.number)) and not isinstance(value, bool):
        yield value


@pytest.mark.parametrize("row", FINITE, ids=repr)
@SETTINGS
@given(draw=st.data())
def test_valid_looking_input_gives_a_finite_real_answer(row, draw):
    kwargs = {name: draw.draw(strategy, label=name) for name, strategy in row.strategies.items()}
    try:
        result = row.call(**kwargs)
    except (ValueError, TypeError) as error:  # a refusal is fine if it names what is wrong
        assert any(name in str(error) for name in kwargs), f"unclear refusal of {kwargs}: {error}"
        return
    for number in _numbers(result):
        assert not isinstance(number, complex), f"complex result {number} from {kwargs}"
        if isinstance(number, float):
            assert math.isfinite(number), f"non-finite result {number} from {kwargs}"
