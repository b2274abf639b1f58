import math

import pytest

from book import experiments
from book.model import count_params


def decades(runs):
    sizes = [count_params(run.model, embedding=False) for run in runs]
    return math.log10(max(sizes) / min(sizes))


@pytest.mark.parametrize("profile, at_least", [("cpu", 1.5), ("gpu", 2.0)])
def test_first_scaling_sweep_spans_enough_decades(monkeypatch, profile, at_least):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    runs = experiments.first_scaling_sweep(81)
    assert len(runs) >= 5
    assert decades(runs) >= at_least
    names = [run.name for run in runs]
    assert len(set(names)) == len(names)
    sizes = [count_params(run.model, embedding=False) for run in runs]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_first_scaling_sweep_shares_data_schedule_and_depth(monkeypatch, profile):
    monkeypatch.setenv("BOOK_PROFILE", profile)
    runs = experiments.first_scaling_sweep(81)
    assert len({run.train for run in runs}) == 1  # same steps, batch, lr, seed: the same tokens for all
    assert len({(run.model.n_layer, run.model.n_ctx, run.model.d_head, run.model.vocab_size) for run in runs}) == 1
    tokens = runs[0].train.steps * runs[0].train.batch_size * runs[0].model.n_ctx
    assert tokens == {"cpu": 204_800, "gpu": 4_096_000}[profile]  # as the docstring says
    assert tokens < 4_499_025  # Shakespeare's training characters: no text is seen twice


def test_first_scaling_sweep_differs_by_profile(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    cpu = experiments.first_scaling_sweep(81)
    monkeypatch.setenv("BOOK_PROFILE", "gpu")
    gpu = experiments.first_scaling_sweep(81)
    assert max(count_params(r.model, embedding=False) for r in gpu) > max(count_params(r.model, embedding=False) for r in cpu)


@pytest.mark.parametrize("vocab_size", [0, -3, 8.0, True, "81"])
def test_first_scaling_sweep_rejects_bad_vocab_size(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        experiments.first_scaling_sweep(vocab_size)
