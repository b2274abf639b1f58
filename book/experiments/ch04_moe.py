"""Chapter 4, mixture of experts: the runs of its lessons, by profile.

- ``balance_runs``: one small MoE GPT trained without and with the balancing losses (lesson 4.3);
- ``scaling_runs``: a dense GPT against MoE GPTs with the same *active* parameters (lesson 4.4).

Both are trained with ``book.expert_usage.run_tracked``, which records the experts' shares.
"""

from __future__ import annotations

from book import checks
from book.device import by_profile
from book.model import GPTConfig
from book.sweep import Run
from book.train import TrainConfig

BALANCE_SWEEP = "ch4-load-balance"
SCALING_SWEEP = "ch4-sparse-scaling"


def _shape() -> dict:
    return by_profile(
        cpu=dict(n_layer=2, d_model=64, n_head=4, n_ctx=64),
        gpu=dict(n_layer=4, d_model=256, n_head=8, n_ctx=256),
    )


def _schedule(steps_cpu: int, steps_gpu: int) -> TrainConfig:
    return TrainConfig(
        steps=by_profile(cpu=steps_cpu, gpu=steps_gpu),
        batch_size=by_profile(cpu=16, gpu=32),
        lr=by_profile(cpu=3e-3, gpu=1e-3),
    )


def balance_runs(vocab_size: int) -> list[Run]:
    """The same MoE GPT (8 experts, top-2, every layer) with no balancing loss, Switch's loss, and
    both.

    The first run's router learns only from the language-modelling loss, which rewards
    whichever experts are already ahead; the other two add the Switch load-balancing loss
    (coefficient 0.01) and then also the router z-loss (0.001).
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    shape = _shape()
    moe = dict(n_experts=8, expert_k=2, d_ff=2 * shape["d_model"], moe_every=1)
    schedule = _schedule(300, 1000)
    variants = (
        ("no-balancing", 0.0, 0.0),
        ("switch-loss", 0.01, 0.0),
        ("switch-and-z-loss", 0.01, 0.001),
    )
    return [
        Run(
            name,
            GPTConfig(vocab_size=vocab_size, aux_loss_coef=aux, z_loss_coef=z, **shape, **moe),
            schedule,
        )
        for name, aux, z in variants
    ]


def scaling_runs(vocab_size: int) -> list[Run]:
    """A dense GPT and MoE GPTs with the same active parameters, all trained on the same tokens.

    The dense MLP has d_ff = 4d. Each MoE layer has n_experts experts of width 4d / k with
    top-k routing (k = 2), so a token runs 2 experts of width 2d: the same multiply-adds as
    the dense MLP, plus the router's d x n_experts. Total parameters grow with n_experts.
    """
    vocab_size = checks.positive_int("vocab_size", vocab_size)
    shape = _shape()
    schedule = _schedule(400, 1500)
    d_ff, k = 4 * shape["d_model"], 2
    runs = [Run("dense", GPTConfig(vocab_size=vocab_size, **shape), schedule)]
    for n_experts in (8, 16):
        runs.append(
            Run(
                f"moe-{n_experts}x{k}",
                GPTConfig(
                    vocab_size=vocab_size, n_experts=n_experts, expert_k=k, d_ff=d_ff // k, **shape
                ),
                schedule,
            )
        )
    return runs


def planned_runs() -> dict[str, list[Run]]:
    """Every sweep chapter 4's lessons train, with its runs at the current profile."""
    from book.experiments import shakespeare

    vocab = shakespeare().vocab_size
    return {BALANCE_SWEEP: balance_runs(vocab), SCALING_SWEEP: scaling_runs(vocab)}


# Lessons, by number, that share cached sweeps, and the sweeps each group trains (book.experiments.lesson_group):
# lesson 5 reads lesson 3's trained models; lesson 4's scaling sweep is its own.
LESSON_GROUPS = {(1, 2, 3, 5): (BALANCE_SWEEP,), (4,): (SCALING_SWEEP,)}
