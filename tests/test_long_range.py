import math

import pytest
import torch

from book import attention, long_range
from book.model import GPT


def test_peak_tensor_bytes_counts_what_operators_create():
    a = torch.ones(100, 100)
    _, peak = long_range.peak_tensor_bytes(lambda: (a @ a).sum())
    assert peak == 100 * 100 * 4 + 4
    # Freed tensors stop counting: two products made one after the other never coexist.
    def two_in_turn():
        (a @ a).sum()
        return (a @ a).sum()
    assert long_range.peak_tensor_bytes(two_in_turn)[1] == 100 * 100 * 4 + 4
    # Views cost nothing.
    assert long_range.peak_tensor_bytes(lambda: a.t()[:10])[1] == 0


def test_naive_attention_peaks_at_two_score_matrices():
    q, k, v = long_range.random_qkv(64, heads=2, d_head=8)
    _, peak = long_range.peak_tensor_bytes(lambda: attention.naive_attention(q, k, v))
    scores = attention.score_bytes(64, 2)
    assert 2 * scores <= peak <= 2 * scores + 4 * 64 * 2 * 8 * 4


def test_peak_tensor_bytes_rejects_other_devices():
    with pytest.raises(ValueError, match="device"):
        long_range.peak_tensor_bytes(lambda: None, device="meta")


def test_random_qkv_and_measure_attention():
    q, k, v = long_range.random_qkv(10, batch=2, heads=3, d_head=4, seed=1)
    assert q.shape == k.shape == v.shape == (2, 3, 10, 4)
    torch.testing.assert_close(q, long_range.random_qkv(10, batch=2, heads=3, d_head=4, seed=1)[0])
    row = long_range.measure_attention(attention.naive_attention, 16, heads=1, d_head=8, min_run_time=0.001)
    assert row["n"] == 16 and row["seconds"] > 0 and row["peak_bytes"] >= 2 * 16 * 16 * 4
    with pytest.raises(ValueError, match="n must be a positive int"):
        long_range.random_qkv(0)


def test_crossover():
    assert long_range.crossover([1, 2, 3, 4], [5, 1, 6, 1], [2, 2, 2, 2]) == 4
    assert long_range.crossover([1, 2, 3], [1, 1, 1], [2, 2, 2]) == 1
    assert long_range.crossover([1, 2], [3, 3], [2, 2]) is None
    with pytest.raises(ValueError, match="one length"):
        long_range.crossover([1, 2], [1], [1, 2])


def test_copy_entropy_and_floor():
    assert long_range.copy_entropy(16, 1.0) == pytest.approx(math.log(16))  # all fresh: uniform
    hit = 0.8 + 0.2 / 16
    assert long_range.copy_entropy(16, 0.2) == pytest.approx(-hit * math.log(hit) - 15 * (0.2 / 16) * math.log(0.2 / 16))
    h = long_range.copy_entropy(16, 0.2)
    assert long_range.copy_floor(16, 24, 0.2, 64) == pytest.approx((23 * math.log(16) + 41 * h) / 64)
    assert long_range.copy_floor(16, 24, 0.2, 64, window=24) == long_range.copy_floor(16, 24, 0.2, 64)
    assert long_range.copy_floor(16, 24, 0.2, 64, window=23) == pytest.approx(math.log(16))
    assert long_range.copy_floor(16, 24, 0.2, 10) == pytest.approx(math.log(16))  # the source never in view
    assert long_range.copy_ceiling(16, 0.2) == pytest.approx(hit)
    for bad, match in ((lambda: long_range.copy_entropy(16, 0.0), "p_fresh"),
                       (lambda: long_range.copy_floor(16, 0, 0.2, 64), "lag"),
                       (lambda: long_range.copy_floor(16, 4, 0.2, 64, window=0), "window")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_copy_task_copies_at_the_lag():
    data = long_range.copy_task(n_values=8, lag=5, p_fresh=0.25, n_train=40_000, n_val=1000, seed=3)
    assert long_range.copy_shape(data) == {"n_values": 8, "lag": 5, "p_fresh": 0.25}
    assert data.vocab_size == 8 and data.entropy_rate == pytest.approx(long_range.copy_entropy(8, 0.25))
    x = data.train
    same = (x[5:] == x[:-5]).float().mean().item()
    assert same == pytest.approx(0.75 + 0.25 / 8, abs=0.01)
    for lag in (1, 4, 6, 9):  # no offset but multiples of the lag carries information
        assert (x[lag:] == x[:-lag]).float().mean().item() == pytest.approx(1 / 8, abs=0.01)
    again = long_range.copy_task(n_values=8, lag=5, p_fresh=0.25, n_train=40_000, n_val=1000, seed=3)
    assert torch.equal(again.train, data.train) and not torch.equal(data.train[:1000], data.val)


@pytest.mark.parametrize("bad, match", [(dict(n_values=1), "n_values"), (dict(lag=0), "lag"),
                                         (dict(p_fresh=1.5), "p_fresh"), (dict(n_train=40), "two lags")])
def test_copy_task_rejects_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        long_range.copy_task(**bad)


def test_copy_shape_rejects_other_data():
    data = long_range.copy_task(n_train=1000, n_val=1000)
    with pytest.raises(ValueError, match="copy_task"):
        long_range.copy_shape(type(data)(data.train, data.val, data.vocab_size, name="shakespeare"))


class _Oracle(torch.nn.Module):
    """Predicts the token lag positions back: the copy task's best guess."""

    def __init__(self, config, lag, vocab):
        super().__init__()
        self.config, self.lag, self.vocab = config, lag, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        shifted = torch.cat([torch.zeros_like(idx[:, :self.lag - 1]), idx[:, :idx.shape[1] - self.lag + 1]], dim=1)
        return torch.nn.functional.one_hot(shifted, self.vocab).float(), None


def test_copy_runs_and_accuracy():
    data = long_range.copy_task(n_train=5000, n_val=5000)
    runs = long_range.copy_runs(data)
    assert [r.name for r in runs] == list(long_range.LEARNING_VARIANTS)
    lag = long_range.copy_shape(data)["lag"]
    windows = {r.name: r.model.attention_window for r in runs if r.model.attention == "sliding_window"}
    assert windows["window_short"] < lag <= windows["window_long"] < runs[0].model.n_ctx
    assert {r.model.attention for r in runs} == {"sdpa", "sliding_window", "linear", "lsh"}
    torch.manual_seed(0)
    accuracy = long_range.copy_accuracy(GPT(runs[0].model), data, n_windows=8)
    assert 0 <= accuracy <= 0.5  # an untrained model guesses
    oracle = _Oracle(runs[0].model, lag, data.vocab_size)
    assert long_range.copy_accuracy(oracle, data) == pytest.approx(long_range.copy_ceiling(16, 0.2), abs=0.02)
    short = GPT(runs[0].model.__class__(**{**runs[0].model.to_dict(), "n_ctx": 8}))
    with pytest.raises(ValueError, match="n_ctx"):
        long_range.copy_accuracy(short, data)
    with pytest.raises(ValueError, match="variant"):
        long_range.copy_runs(data, variants=("window",))


def test_shakespeare_runs():
    runs = long_range.shakespeare_runs(65)
    assert [r.name for r in runs] == list(long_range.LEARNING_VARIANTS)
    n_ctx = runs[0].model.n_ctx
    assert n_ctx >= 256 and all(r.model.n_ctx == n_ctx and r.model.vocab_size == 65 for r in runs)
    with pytest.raises(ValueError, match="vocab_size"):
        long_range.shakespeare_runs(0)
