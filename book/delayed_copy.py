"""A task that needs long range: the delayed copy, with the best loss any model can reach on it.

- ``copy_task(...)``: a token stream in which a token repeats the one ``lag`` positions back (or is
  fresh noise); ``copy_entropy`` is its entropy rate once the source is in view;
- ``copy_floor``: the best mean loss over a training window, any model; ``copy_ceiling``: the best
  accuracy where the source is in view; ``copy_accuracy`` scores a model on it.

Lesson 5.5's runs on it are in ``book.experiments.ch05_attention``.
"""

from __future__ import annotations

import math

import torch

from book import checks
from book.data import TokenDataset
from book.model import GPT
from book.train import evaluate

# --------------------------------------------------------------------------- a task that needs long
# range


def _values(n_values) -> int:
    if checks.positive_int("n_values", n_values) < 2:
        raise ValueError(
            f"n_values must be at least 2 (one value carries no information), got {n_values}"
        )
    return n_values


def _fresh(p_fresh) -> float:
    return checks.probability("p_fresh", p_fresh, open_low=True)


def copy_entropy(n_values: int, p_fresh: float) -> float:
    """Nats per token that no model can predict once the token ``lag`` back is in view.

    The token is a copy with probability 1 - p, else uniform over V (which repeats the copy 1/V of
    the time): the right token has probability 1 - p + p/V, each of the V - 1 others p/V.
    """
    n_values, p_fresh = _values(n_values), _fresh(p_fresh)
    hit, miss = 1 - p_fresh + p_fresh / n_values, p_fresh / n_values
    return -hit * math.log(hit) - (n_values - 1) * miss * math.log(miss)


def copy_task(
    n_values: int = 16,
    lag: int = 24,
    p_fresh: float = 0.2,
    n_train: int = 200_000,
    n_val: int = 20_000,
    seed: int = 0,
) -> TokenDataset:
    """A delayed copy: token t repeats token t - ``lag`` with probability 1 - ``p_fresh``, else it
    is fresh.

    The first ``lag`` tokens, and every fresh token, are uniform over ``n_values`` symbols. Given
    the token ``lag`` back, nothing else in the past tells anything more (the stream is a Markov
    chain of order ``lag`` that looks only at that one position); without it, and without the tokens
    2, 3, ... lags back (further still), a token is uniform: log V nats. So a model beats log V only
    by attending exactly ``lag`` - 1 positions back from the query (its input is token t - 1, its
    target token t). ``entropy_rate``: `copy_entropy`.
    """
    n_values, p_fresh = _values(n_values), _fresh(p_fresh)
    checks.nonnegative_int("seed", seed)
    for name, value in (("lag", lag), ("n_train", n_train), ("n_val", n_val)):
        checks.positive_int(name, value)
    entropy = copy_entropy(n_values, p_fresh)
    if min(n_train, n_val) <= 2 * lag:
        raise ValueError(f"n_train and n_val must be longer than two lags ({2 * lag} tokens)")
    generator = torch.Generator().manual_seed(seed)

    def stream(n_tokens):
        x = torch.randint(0, n_values, (n_tokens,), generator=generator)
        keep = torch.rand(n_tokens, generator=generator) >= p_fresh
        for start in range(
            lag, n_tokens, lag
        ):  # one lag-long segment at a time: it copies the one before
            stop = min(start + lag, n_tokens)
            x[start:stop] = torch.where(
                keep[start:stop], x[start - lag : stop - lag], x[start:stop]
            )
        return x

    return TokenDataset(
        train=stream(n_train),
        val=stream(n_val),
        vocab_size=n_values,
        name=f"copy-V{n_values}-lag{lag}-p{p_fresh:g}-s{seed}",
        entropy_rate=entropy,
    )


def copy_shape(data: TokenDataset) -> dict:
    """{"n_values", "lag", "p_fresh"} of a `copy_task` dataset, read from its name."""
    parts = data.name.split("-")
    if (
        len(parts) != 5
        or parts[0] != "copy"
        or not (
            parts[1].startswith("V") and parts[2].startswith("lag") and parts[3].startswith("p")
        )
    ):
        raise ValueError(f"data is not a copy_task dataset (name {data.name!r})")
    return {"n_values": int(parts[1][1:]), "lag": int(parts[2][3:]), "p_fresh": float(parts[3][1:])}


def copy_floor(
    n_values: int, lag: int, p_fresh: float, n_ctx: int, window: int | None = None
) -> float:
    """The lowest mean loss over a training window of ``n_ctx`` predictions any model can reach.

    Prediction i (input position i, target token i + 1 of the window) can see its source, token
    i + 1 - lag, only if that token is in the window (i >= lag - 1) and, for attention limited to
    the last ``window`` positions (query included), if lag - 1 < window. The others cost log V.
    """
    lag, n_ctx = checks.positive_int("lag", lag), checks.positive_int("n_ctx", n_ctx)
    window = checks.optional(checks.positive_int, "window", window)
    entropy = copy_entropy(n_values, p_fresh)
    reachable = window is None or window >= lag
    seen = max(0, n_ctx - (lag - 1)) if reachable else 0
    return (seen * entropy + (n_ctx - seen) * math.log(n_values)) / n_ctx


def copy_ceiling(n_values: int, p_fresh: float) -> float:
    """The best accuracy on predictions whose source is in view: always guess the copy."""
    n_values, p_fresh = _values(n_values), _fresh(p_fresh)
    return 1 - p_fresh + p_fresh / n_values


def copy_accuracy(model: GPT, data: TokenDataset, n_windows: int = 256) -> float:
    """Fraction of right argmax predictions on ``n_windows`` fixed validation windows, counted where
    the source is in the window (``book.train.evaluate``'s windows, scored by accuracy)."""
    checks.positive_int("n_windows", n_windows)
    lag, n_ctx = copy_shape(data)["lag"], model.config.n_ctx
    if n_ctx < lag:
        raise ValueError(
            f"the model's n_ctx={n_ctx} is shorter than the lag ({lag}): no source is ever in view"
        )

    def accuracy(
        logits, targets
    ):  # prediction i sees its source, token i + 1 - lag, from i = lag - 1 on
        return (logits[:, lag - 1 :].argmax(dim=-1) == targets[:, lag - 1 :]).float().mean()

    return evaluate(model, data.val, batch_size=n_windows, n_batches=1, score=accuracy)
