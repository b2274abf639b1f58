import math

import pytest
import torch

from book import delayed_copy
from book.experiments import ch05_attention
from book.model import GPT


def test_copy_entropy_and_floor():
    assert delayed_copy.copy_entropy(16, 1.0) == pytest.approx(math.log(16))  # all fresh: uniform
    hit = 0.8 + 0.2 / 16
    assert delayed_copy.copy_entropy(16, 0.2) == pytest.approx(-hit * math.log(hit) - 15 * (0.2 / 16) * math.log(0.2 / 16))
    h = delayed_copy.copy_entropy(16, 0.2)
    assert delayed_copy.copy_floor(16, 24, 0.2, 64) == pytest.approx((23 * math.log(16) + 41 * h) / 64)
    assert delayed_copy.copy_floor(16, 24, 0.2, 64, window=24) == delayed_copy.copy_floor(16, 24, 0.2, 64)
    assert delayed_copy.copy_floor(16, 24, 0.2, 64, window=23) == pytest.approx(math.log(16))
    assert delayed_copy.copy_floor(16, 24, 0.2, 10) == pytest.approx(math.log(16))  # the source never in view
    assert delayed_copy.copy_ceiling(16, 0.2) == pytest.approx(hit)
    for bad, match in ((lambda: delayed_copy.copy_entropy(16, 0.0), "p_fresh"),
                       (lambda: delayed_copy.copy_floor(16, 0, 0.2, 64), "lag"),
                       (lambda: delayed_copy.copy_floor(16, 4, 0.2, 64, window=0), "window")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_copy_task_copies_at_the_lag():
    data = delayed_copy.copy_task(n_values=8, lag=5, p_fresh=0.25, n_train=40_000, n_val=1000, seed=3)
    assert delayed_copy.copy_shape(data) == {"n_values": 8, "lag": 5, "p_fresh": 0.25}
    assert data.vocab_size == 8 and data.entropy_rate == pytest.approx(delayed_copy.copy_entropy(8, 0.25))
    x = data.train
    same = (x[5:] == x[:-5]).float().mean().item()
    assert same == pytest.approx(0.75 + 0.25 / 8, abs=0.01)
    for lag in (1, 4, 6, 9):  # no offset but multiples of the lag carries information
        assert (x[lag:] == x[:-lag]).float().mean().item() == pytest.approx(1 / 8, abs=0.01)
    again = delayed_copy.copy_task(n_values=8, lag=5, p_fresh=0.25, n_train=40_000, n_val=1000, seed=3)
    assert torch.equal(again.train, data.train) and not torch.equal(data.train[:1000], data.val)


@pytest.mark.parametrize("bad, match", [(dict(n_values=1), "n_values"), (dict(lag=0), "lag"),
                                         (dict(p_fresh=1.5), "p_fresh"), (dict(n_train=40), "two lags"),
                                         (dict(lag=True), "lag"), (dict(seed=-1), "seed")])
def test_copy_task_rejects_bad_arguments(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        delayed_copy.copy_task(**bad)


def test_copy_shape_rejects_other_data():
    data = delayed_copy.copy_task(n_train=1000, n_val=1000)
    with pytest.raises(ValueError, match="copy_task"):
        delayed_copy.copy_shape(type(data)(data.train, data.val, data.vocab_size, name="shakespeare"))


class _Oracle(torch.nn.Module):
    """Predicts the token lag positions back: the copy task's best guess."""

    def __init__(self, config, lag, vocab):
        super().__init__()
        self.config, self.lag, self.vocab = config, lag, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        shifted = torch.cat([torch.zeros_like(idx[:, :self.lag - 1]), idx[:, :idx.shape[1] - self.lag + 1]], dim=1)
        return torch.nn.functional.one_hot(shifted, self.vocab).float(), None


def test_copy_accuracy():
    data = delayed_copy.copy_task(n_train=5000, n_val=5000)
    run = ch05_attention.copy_runs(data)[0]
    lag = delayed_copy.copy_shape(data)["lag"]
    torch.manual_seed(0)
    accuracy = delayed_copy.copy_accuracy(GPT(run.model), data, n_windows=8)
    assert 0 <= accuracy <= 0.5  # an untrained model guesses
    oracle = _Oracle(run.model, lag, data.vocab_size)
    assert delayed_copy.copy_accuracy(oracle, data) == pytest.approx(delayed_copy.copy_ceiling(16, 0.2), abs=0.02)
    short = GPT(run.model.__class__(**{**run.model.to_dict(), "n_ctx": 8}))
    with pytest.raises(ValueError, match="n_ctx"):
        delayed_copy.copy_accuracy(short, data)


@pytest.mark.parametrize("call, match", [
    (lambda: delayed_copy.copy_ceiling(16, 2.0), "p_fresh"),
    (lambda: delayed_copy.copy_ceiling(1, 0.2), "n_values"),
    (lambda: delayed_copy.copy_floor(16, 0, 0.2, 64), "lag"),
    (lambda: delayed_copy.copy_floor(16, 4, 0.2, 64, window=0), "window"),
    (lambda: delayed_copy.copy_entropy(16.0, 0.2), "n_values"),
])
def test_bad_input_raises(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
