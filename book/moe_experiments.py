"""Chapter 4's experiments, defined once: the runs, expert usage over training, memory accounting.

- ``balance_runs``: one small MoE GPT trained without and with the balancing losses (lesson 3);
- ``scaling_runs``: a dense GPT against MoE GPTs with the same *active* parameters (lesson 4);
- ``run_tracked``: ``book.sweep.run_sweep`` (cached one JSON a run, weights kept, so
  ``book.sweep.load_model`` reads them back) that also records, at every training step, what share of
  the token-slots each expert of each MoE layer received;
- ``step_throughput``: training tokens per second of each run's model, timed back to back;
- ``training_bytes`` / ``serving_bytes``: memory a model's parameters need to train (mixed precision,
  Adam) and to serve.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from book import device as _device
from book import hardware as _hardware
from book import sweep as _sweep
from book import train as _train
from book.data import TokenDataset
from book.device import by_profile
from book.model import GPT, GPTConfig
from book.moe import MoE
from book.sweep import Run
from book.train import TrainConfig

BALANCE_SWEEP = "ch4-load-balance"
SCALING_SWEEP = "ch4-sparse-scaling"


def _check_vocab(vocab_size) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")


def _shape() -> dict:
    return by_profile(cpu=dict(n_layer=2, d_model=64, n_head=4, n_ctx=64),
                      gpu=dict(n_layer=4, d_model=256, n_head=8, n_ctx=256))


def _schedule(steps_cpu: int, steps_gpu: int) -> TrainConfig:
    return TrainConfig(steps=by_profile(cpu=steps_cpu, gpu=steps_gpu), batch_size=by_profile(cpu=16, gpu=32),
                       lr=by_profile(cpu=3e-3, gpu=1e-3))


def balance_runs(vocab_size: int) -> list[Run]:
    """The same MoE GPT (8 experts, top-2, every layer) with no balancing loss, Switch's loss, and both losses.

    The first run's router learns only from the language-modelling loss, which rewards
    whichever experts are already ahead; the other two add the Switch load-balancing loss
    (coefficient 0.01) and then also the router z-loss (0.001).
    """
    _check_vocab(vocab_size)
    shape = _shape()
    moe = dict(n_experts=8, expert_k=2, d_ff=2 * shape["d_model"], moe_every=1)
    schedule = _schedule(300, 1000)
    variants = (("no-balancing", 0.0, 0.0), ("switch-loss", 0.01, 0.0), ("switch-and-z-loss", 0.01, 0.001))
    return [Run(name, GPTConfig(vocab_size=vocab_size, aux_loss_coef=aux, z_loss_coef=z, **shape, **moe), schedule)
            for name, aux, z in variants]


def scaling_runs(vocab_size: int) -> list[Run]:
    """A dense GPT and MoE GPTs with the same active parameters, all trained on the same tokens.

    The dense MLP has d_ff = 4d. Each MoE layer has n_experts experts of width 4d / k with
    top-k routing (k = 2), so a token runs 2 experts of width 2d: the same multiply-adds as
    the dense MLP, plus the router's d x n_experts. Total parameters grow with n_experts.
    """
    _check_vocab(vocab_size)
    shape = _shape()
    schedule = _schedule(400, 1500)
    d_ff, k = 4 * shape["d_model"], 2
    runs = [Run("dense", GPTConfig(vocab_size=vocab_size, **shape), schedule)]
    for n_experts in (8, 16):
        runs.append(Run(f"moe-{n_experts}x{k}", GPTConfig(vocab_size=vocab_size, n_experts=n_experts, expert_k=k,
                                                           d_ff=d_ff // k, **shape), schedule))
    return runs


# --------------------------------------------------------------------------- expert usage over training


class UsageTracker:
    """Records what every ``MoE`` layer does in each training forward pass, while the ``with`` block is open.

    A global forward hook sees every ``MoE`` module in training mode (evaluation passes are
    skipped); the layers of one model run in order, so with ``n_moe_layers`` of them, calls
    cycle through layers 0, 1, ... Each record is the share of token-slots each expert received
    (before capacity), the dropped fraction and the router's entropy.
    """

    def __init__(self, n_moe_layers: int):
        if not isinstance(n_moe_layers, int) or n_moe_layers <= 0:
            raise ValueError(f"n_moe_layers must be a positive int, got {n_moe_layers!r}")
        self.n_moe_layers = n_moe_layers
        self.share: list[list[list[float]]] = []  # step -> layer -> expert
        self.dropped: list[list[float]] = []
        self.entropy: list[list[float]] = []
        self._calls, self._handle = 0, None

    def _hook(self, module, inputs, output):
        if not isinstance(module, MoE) or not module.training or module.stats is None:
            return
        stats = module.stats
        counts = stats.tokens_per_expert.float()
        share = (counts / counts.sum().clamp_min(1)).tolist()
        if self._calls % self.n_moe_layers == 0:
            self.share.append([])
            self.dropped.append([])
            self.entropy.append([])
        self.share[-1].append([round(s, 5) for s in share])
        self.dropped[-1].append(round(float(stats.dropped_fraction), 5))
        self.entropy[-1].append(round(float(stats.router_entropy), 5))
        self._calls += 1

    def __enter__(self) -> UsageTracker:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def to_dict(self) -> dict:
        return {"share": self.share, "dropped": self.dropped, "entropy": self.entropy}


def run_tracked(runs: list[Run], data: TokenDataset, sweep: str, *, results_dir: Path | None = None,
                progress: bool = True) -> list[dict]:
    """``run_sweep(..., keep_models=True)`` with a ``UsageTracker`` open while each run trains.

    Each result dict is ``run_sweep``'s, whose ``"tracked"`` entry, also given as ``"usage"``, is
    ``UsageTracker.to_dict()`` of the run (empty lists for a dense model). ``book.sweep.load_model(result)``
    returns the trained model.
    """
    results = _sweep.run_sweep(runs, data, sweep, results_dir=results_dir, progress=progress, keep_models=True,
                               track=lambda run: UsageTracker(max(1, run.model.n_moe_layers)))
    return [result | {"usage": result["tracked"]} for result in results]


def usage_array(result: dict):
    """A result's expert shares as a numpy array (steps, moe layers, experts)."""
    import numpy as np

    share = result.get("usage", {}).get("share", [])
    if not share:
        raise ValueError(f"run {result.get('run')!r} has no recorded expert usage (a dense model?)")
    return np.array(share)


def max_share(result: dict):
    """Per step, the largest share any one expert got, averaged over the MoE layers: 1/n_experts is perfect balance."""
    return usage_array(result).max(-1).mean(-1)


# --------------------------------------------------------------------------- speed


def step_throughput(runs: list[Run], dev: torch.device | None = None, min_run_time: float = 1.0,
                    rounds: int = 2) -> dict[str, float]:
    """Training tokens per second of each run's model: one optimizer step as ``book.train`` takes it.

    Each run's model (freshly initialised) takes forward, backward (cross-entropy plus the MoE
    losses) and an AdamW step on one batch of random tokens of the run's batch size; the median
    step time comes from ``book.hardware.measure_seconds``. The runs are timed one after another,
    ``rounds`` times over, and each keeps its best round, so a busy moment of a shared machine
    does not land on one model only. Unlike a training run's ``tokens_per_s``, no evaluation,
    data loading or first-step warm-up is included.
    """
    if not runs or not all(isinstance(run, Run) for run in runs):
        raise ValueError("runs must be a non-empty list of book.sweep.Run")
    if not isinstance(min_run_time, (int, float)) or isinstance(min_run_time, bool) or not min_run_time > 0:
        raise ValueError(f"min_run_time must be a positive number of seconds, got {min_run_time!r}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    dev = dev or _device.device()
    steps = {}
    for run in runs:
        torch.manual_seed(run.train.seed)
        model = GPT(run.model).to(dev).train()
        optimizer = _train.make_optimizer(model, run.train)
        gen = torch.Generator().manual_seed(run.train.seed)
        x, y = (torch.randint(0, run.model.vocab_size, (run.train.batch_size, run.model.n_ctx), generator=gen).to(dev)
                for _ in range(2))

        def step(model=model, optimizer=optimizer, x=x, y=y):
            with _train._autocast(dev):
                _, loss = model(x, y)
            (loss + model.auxiliary_loss()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[run.name] = (step, run.train.batch_size * run.model.n_ctx)
    best = {name: math.inf for name in steps}
    for _ in range(rounds):
        for name, (step, _tokens) in steps.items():
            best[name] = min(best[name], _hardware.measure_seconds(step, min_run_time=min_run_time))
    return {name: tokens / best[name] for name, (_step, tokens) in steps.items()}


# --------------------------------------------------------------------------- memory


# Mixed-precision training with Adam (Rajbhandari et al., 2020, ZeRO, section 3.1): 2 + 2 + 12 = 16 bytes a parameter.
TRAINING_BYTES_PER_PARAM = {"weights (bf16)": 2, "gradients (bf16)": 2, "fp32 master weights": 4,
                            "Adam first moment (fp32)": 4, "Adam second moment (fp32)": 4}


def training_bytes(n_params: int | float) -> dict[str, float]:
    """Bytes the model states take to train ``n_params`` parameters, by part (activations not included).

    Every parameter of an MoE counts, active or not: each expert has its own weights,
    gradients and optimizer moments, whether a given token used it or not.
    """
    if not isinstance(n_params, (int, float)) or isinstance(n_params, bool) or not n_params > 0:
        raise ValueError(f"n_params must be a positive number, got {n_params!r}")
    return {part: float(b * n_params) for part, b in TRAINING_BYTES_PER_PARAM.items()}


def serving_bytes(n_params: int | float, bytes_per_param: float = 2.0) -> float:
    """Bytes the weights take to serve: every parameter must be in memory (bf16: 2 bytes; int8: 1), KV cache apart."""
    if not isinstance(n_params, (int, float)) or isinstance(n_params, bool) or not n_params > 0:
        raise ValueError(f"n_params must be a positive number, got {n_params!r}")
    if not isinstance(bytes_per_param, (int, float)) or not bytes_per_param > 0 or math.isinf(bytes_per_param):
        raise ValueError(f"bytes_per_param must be a positive number, got {bytes_per_param!r}")
    return float(n_params * bytes_per_param)
