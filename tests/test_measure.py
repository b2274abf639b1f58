import pytest
import torch

from book import attention, measure


def test_peak_tensor_bytes_counts_what_operators_create():
    a = torch.ones(100, 100)
    _, peak = measure.peak_tensor_bytes(lambda: (a @ a).sum())
    assert peak == 100 * 100 * 4 + 4
    # Freed tensors stop counting: two products made one after the other never coexist.
    def two_in_turn():
        (a @ a).sum()
        return (a @ a).sum()
    assert measure.peak_tensor_bytes(two_in_turn)[1] == 100 * 100 * 4 + 4
    # Views cost nothing.
    assert measure.peak_tensor_bytes(lambda: a.t()[:10])[1] == 0


def test_naive_attention_peaks_at_two_score_matrices():
    q, k, v = measure.random_qkv(64, heads=2, d_head=8)
    _, peak = measure.peak_tensor_bytes(lambda: attention.naive_attention(q, k, v))
    scores = attention.score_bytes(64, 2)
    assert 2 * scores <= peak <= 2 * scores + 4 * 64 * 2 * 8 * 4


def test_peak_tensor_bytes_rejects_other_devices():
    with pytest.raises(ValueError, match="device"):
        measure.peak_tensor_bytes(lambda: None, device="meta")


def test_random_qkv_and_measure_attention():
    q, k, v = measure.random_qkv(10, batch=2, heads=3, d_head=4, seed=1)
    assert q.shape == k.shape == v.shape == (2, 3, 10, 4)
    torch.testing.assert_close(q, measure.random_qkv(10, batch=2, heads=3, d_head=4, seed=1)[0])
    row = measure.measure_attention(attention.naive_attention, 16, heads=1, d_head=8, min_run_time=0.001)
    assert row["n"] == 16 and row["seconds"] > 0 and row["peak_bytes"] >= 2 * 16 * 16 * 4
    with pytest.raises(ValueError, match="n must be a positive int"):
        measure.random_qkv(0)


def test_crossover():
    assert measure.crossover([1, 2, 3, 4], [5, 1, 6, 1], [2, 2, 2, 2]) == 4
    assert measure.crossover([1, 2, 3], [1, 1, 1], [2, 2, 2]) == 1
    assert measure.crossover([1, 2], [3, 3], [2, 2]) is None
    with pytest.raises(ValueError, match="one length"):
        measure.crossover([1, 2], [1], [1, 2])
