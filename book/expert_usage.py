"""Expert usage over training: what share of the token-slots each expert of each MoE layer receives.

- ``UsageTracker``: a forward hook that records, at every training step, each expert's share, the
  dropped fraction and the router's entropy;
- ``run_tracked``: ``book.sweep.run_sweep`` (cached one JSON a run, weights kept, so
  ``book.sweep.load_model`` reads them back) with a tracker open while each run trains;
- ``usage_array`` and ``max_share``: the records as arrays.

Chapter 4's runs are in ``book.experiments.ch04_moe``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from book import checks
from book import sweep as _sweep
from book.data import TokenDataset
from book.moe import MoE
from book.sweep import Run

# --------------------------------------------------------------------------- expert usage over
# training


class UsageTracker:
    """Records what every ``MoE`` layer does in each training forward pass, while the ``with`` block
    is open.

    A global forward hook sees every ``MoE`` module in training mode (evaluation passes are
    skipped); the layers of one model run in order, so with ``n_moe_layers`` of them, calls
    cycle through layers 0, 1, ... Each record is the share of token-slots each expert received
    (before capacity), the dropped fraction and the router's entropy.
    """

    def __init__(self, n_moe_layers: int):
        self.n_moe_layers = checks.positive_int("n_moe_layers", n_moe_layers)
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


def run_tracked(
    runs: list[Run],
    data: TokenDataset,
    sweep: str,
    *,
    results_dir: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """``run_sweep(..., keep_models=True)`` with a ``UsageTracker`` open while each run trains.

    Each result dict is ``run_sweep``'s, whose ``"tracked"`` entry, also given as ``"usage"``, is
    ``UsageTracker.to_dict()`` of the run (empty lists for a dense model).
    ``book.sweep.load_model(result)`` returns the trained model.
    """
    if not runs or not all(isinstance(run, Run) for run in runs):
        raise TypeError("runs must be a non-empty list of book.sweep.Run")
    if not isinstance(data, TokenDataset):
        raise TypeError(f"data must be a book.data.TokenDataset, got {type(data).__name__}")
    results = _sweep.run_sweep(
        runs,
        data,
        sweep,
        results_dir=results_dir,
        progress=progress,
        keep_models=True,
        track=lambda run: UsageTracker(max(1, run.model.n_moe_layers)),
    )
    return [result | {"usage": result["tracked"]} for result in results]


def usage_array(result: dict):
    """A result's expert shares as a numpy array (steps, moe layers, experts)."""
    if not isinstance(result, dict):
        raise TypeError(f"result must be a result dict of run_tracked, got {type(result).__name__}")
    share = result.get("usage", {}).get("share", [])
    if not share:
        raise ValueError(f"run {result.get('run')!r} has no recorded expert usage (a dense model?)")
    return np.array(share)


def max_share(result: dict):
    """Per step, the largest share any one expert got, averaged over the MoE layers: 1/n_experts is
    perfect balance."""
    return usage_array(result).max(-1).mean(-1)
