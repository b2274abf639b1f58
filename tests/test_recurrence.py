import json

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from book import hardware, recurrence
from book.hardware import accelerator_hours, training_flops
from book.model import Block
from book.recurrence import (
    Setup,
    block_config,
    block_flops_per_token,
    block_params,
    kernel_calls,
    lstm_flops_per_token,
    lstm_loop,
    lstm_params,
    matched_lstm_hidden,
    sequential_steps,
)


@pytest.mark.parametrize("d_model, n_head", [(16, 2), (48, 3), (128, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_block_params_is_exact(d_model, n_head, bias):
    cfg = block_config(d_model, n_head)
    if not bias:
        cfg = type(cfg)(**(cfg.to_dict() | {"bias": False}))
    assert block_params(d_model, bias) == sum(p.numel() for p in Block(cfg).parameters())


@pytest.mark.parametrize("input_size, hidden, bias", [(5, 7, True), (16, 16, True), (9, 4, False)])
def test_lstm_params_is_exact(input_size, hidden, bias):
    lstm = nn.LSTM(input_size, hidden, bias=bias)
    assert lstm_params(input_size, hidden, bias) == sum(p.numel() for p in lstm.parameters())


@pytest.mark.parametrize("d_model", [8, 64, 128, 768, 1024])
def test_matched_hidden_is_the_closest(d_model):
    h = matched_lstm_hidden(d_model)
    gap = abs(lstm_params(h, h) - block_params(d_model))
    assert all(gap <= abs(lstm_params(k, k) - block_params(d_model)) for k in range(max(1, h - 20), h + 20))
    assert gap / block_params(d_model) < 0.02
    assert matched_lstm_hidden(128) == 157 and matched_lstm_hidden(1024) == 1254


def test_block_flops_match_the_flop_counter():
    d, n_head, batch, n = 32, 4, 3, 16
    block = Block(block_config(d, n_head, n))
    x = torch.randn(batch, n, d, requires_grad=True)
    # The math backend decomposes attention into matmuls the counter sees; it computes the full n x n products.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        out = block(x)
    assert forward.get_total_flops() == batch * n * block_flops_per_token(d, n, causal=False)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as both:
        block(x).sum().backward()
    assert both.get_total_flops() == batch * n * block_flops_per_token(d, n, training=True, causal=False)
    assert out.shape == x.shape


def test_causal_attention_count_is_the_lower_triangle():
    d, n = 8, 10
    full, causal = block_flops_per_token(d, n, causal=False), block_flops_per_token(d, n)
    weights = 24 * d * d
    # two products (QK^T and AV), n(n+1)/2 dot products of length d each, per sequence of n tokens
    assert (causal - weights) * n == 2 * 2 * d * n * (n + 1) // 2
    assert full - weights == 4 * n * d


def test_lstm_flops_match_the_flop_counter_on_an_explicit_loop():
    # FlopCounterMode has no formula for nn.LSTM's fused kernel (one aten.lstm call on the CPU,
    # cuDNN on a GPU), so we count an explicit LSTMCell loop, checked equal to nn.LSTM below.
    torch.manual_seed(0)
    d_in, h, batch, n = 6, 5, 3, 7
    cell = nn.LSTMCell(d_in, h)
    x = torch.randn(batch, n, d_in, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        lstm_loop(cell, x)
    assert forward.get_total_flops() == batch * n * lstm_flops_per_token(d_in, h)
    # with an initial state that needs its gradient, backward is exactly 2x forward
    state = (torch.zeros(batch, h, requires_grad=True), torch.zeros(batch, h, requires_grad=True))
    with FlopCounterMode(display=False) as both:
        out, _ = lstm_loop(cell, x, state)
        out.sum().backward()
    assert both.get_total_flops() == batch * n * lstm_flops_per_token(d_in, h, training=True)


def test_lstm_loop_equals_nn_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, batch_first=True)
    cell = nn.LSTMCell(4, 6)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, f"{name}_l0"))
    x = torch.randn(2, 9, 4)
    expected, (h, c) = lstm(x)
    got, (h_loop, c_loop) = lstm_loop(cell, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_loop, h[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_loop, c[0], rtol=1e-5, atol=1e-6)


def test_kernel_calls_grow_with_length_for_the_loop_only():
    cell = nn.LSTMCell(4, 4)
    block = Block(block_config(8, 2, 32))
    loop_calls = [sum(kernel_calls(lambda: lstm_loop(cell, torch.randn(2, n, 4))).values()) for n in (8, 32)]
    block_calls = [kernel_calls(lambda: block(torch.randn(2, n, 8))) for n in (8, 32)]
    assert loop_calls == [2 * 8, 2 * 32]  # input and hidden projections, once per step
    assert block_calls[0] == block_calls[1]


def test_sequential_steps():
    assert sequential_steps("lstm", 4096) == 4096
    assert sequential_steps("lstm", 100, n_layer=3) == 300
    assert sequential_steps("block", 4096) == 1
    assert sequential_steps("block", 4096, n_layer=12) == 12


def test_compute_at_scale():
    assert training_flops(1e9, 1e10) == 6e19
    a100 = hardware.accelerator("A100").peak("bfloat16")
    assert accelerator_hours(312e12 * 3600, a100, mfu=1.0) == pytest.approx(1.0)
    assert accelerator_hours(6e19, a100, mfu=0.5) == pytest.approx(6e19 / (0.5 * 312e12) / 3600)
    assert accelerator_hours(1.0, 1.0) == pytest.approx(1 / 3600 / hardware.PALM_540B_MFU)


# --------------------------------------------------------------------------- the cached measurement

TINY = Setup(d_model=16, n_head=2, tokens_per_batch=32, seq_lens=(8, 16))


@pytest.fixture
def fake_peak(monkeypatch):
    # A fixed peak keeps the test from measuring the machine's (seconds); one thread keeps tiny
    # timed steps fast when another process shares the cores (two threads then wait on each other).
    monkeypatch.setattr(hardware, "measured_peak", lambda dtype=None, dev=None: 1e11)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_measurement_is_cached_and_reused(book_cache, fake_peak, monkeypatch):
    dev = torch.device("cpu")
    first = recurrence.load_or_measure(TINY, dev, min_run_time=0.01)
    assert [row["seq_len"] for row in first["rows"]] == [8, 16]
    assert [row["batch"] for row in first["rows"]] == [4, 2]
    assert first["hidden"] == matched_lstm_hidden(16) and first["peak_flops_per_s"] == 1e11
    for row in first["rows"]:
        for name in ("block", "lstm"):
            assert row[f"{name}_seconds"] > 0
            assert row[f"{name}_flops_per_s"] == pytest.approx(row[f"{name}_fraction_of_peak"] * 1e11)
    assert recurrence.cache_path(first["key"]).exists()

    def no_measuring(*args, **kwargs):
        raise AssertionError("the cached measurement should have been reused")

    monkeypatch.setattr(recurrence, "measure", no_measuring)
    assert recurrence.load_or_measure(TINY, dev) == first


def test_measurement_is_redone_when_the_key_differs(book_cache, fake_peak, monkeypatch):
    dev = torch.device("cpu")
    first = recurrence.load_or_measure(TINY, dev, min_run_time=0.01)
    path = recurrence.cache_path(first["key"])
    calls = []
    real_measure = recurrence.measure
    monkeypatch.setattr(recurrence, "measure", lambda *a, **k: calls.append(a) or real_measure(*a, **k))

    other = Setup(d_model=16, n_head=2, tokens_per_batch=32, seq_lens=(8,))
    assert [row["seq_len"] for row in recurrence.load_or_measure(other, dev, min_run_time=0.01)["rows"]] == [8]
    assert len(calls) == 1  # other sizes: another key, measured

    stored = json.loads(path.read_text())
    stored["key"]["code"] = "older-code"  # a file whose key does not match is not trusted
    path.write_text(json.dumps(stored))
    again = recurrence.load_or_measure(TINY, dev, min_run_time=0.01)
    assert len(calls) == 2 and again["key"] == first["key"]
    assert json.loads(path.read_text())["key"] == first["key"]

    monkeypatch.setattr(recurrence, "code_version", lambda: "changed")
    assert recurrence.cache_key(TINY, dev) != first["key"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda: block_params(0), "d_model"),
    (lambda: block_params(8.0), "d_model"),
    (lambda: lstm_params(0, 4), "input_size"),
    (lambda: lstm_params(4, -1), "hidden_size"),
    (lambda: matched_lstm_hidden(True), "d_model"),
    (lambda: lstm_flops_per_token(4, 0), "hidden_size"),
    (lambda: block_flops_per_token(8, 0), "seq_len"),
    (lambda: sequential_steps("gru", 8), "architecture"),
    (lambda: sequential_steps("lstm", 8, n_layer=0), "n_layer"),
    (lambda: lstm_loop(nn.LSTM(4, 4), torch.zeros(1, 2, 4)), "cell"),
    (lambda: lstm_loop(nn.LSTMCell(4, 4), torch.zeros(1, 2, 5)), "x must have shape"),
    (lambda: kernel_calls(3), "fn"),
    (lambda: Setup(d_model=10, n_head=3, tokens_per_batch=8, seq_lens=(8,)), "divisible"),
    (lambda: Setup(d_model=8, n_head=2, tokens_per_batch=8, seq_lens=()), "seq_lens"),
    (lambda: Setup(d_model=8, n_head=2, tokens_per_batch=8, seq_lens=(True,)), "seq_lens"),
    (lambda: recurrence.measure(None), "setup"),
    (lambda: recurrence.build_models("big", "cpu"), "setup"),
    (lambda: Setup(d_model=8, n_head=2, tokens_per_batch=8, seq_lens=(8, 4)), "increasing"),
    (lambda: Setup(d_model=8, n_head=2, tokens_per_batch=12, seq_lens=(8,)), "multiple"),
    (lambda: Setup(d_model=8, n_head=2, tokens_per_batch=0, seq_lens=(8,)), "tokens_per_batch"),
    (lambda: recurrence.load_or_measure(setup="big"), "setup"),
    (lambda: recurrence.train_step(nn.Linear(2, 2), torch.zeros(2)), "require grad"),
    (lambda: training_flops(0, 1e9), "n_params"),
    (lambda: training_flops(1e9, float("inf")), "n_tokens"),
    (lambda: accelerator_hours(-1.0, 1e12), "flops"),
    (lambda: accelerator_hours(1.0, 0.0), "peak_flops_per_s"),
    (lambda: accelerator_hours(1.0, 1e12, mfu=1.5), "mfu"),
    (lambda: accelerator_hours(1.0, 1e12, mfu=0), "mfu"),
])
def test_bad_input_raises(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_a_corrupt_cached_measurement_is_moved_aside_and_redone(book_cache, fake_peak):
    from book.storage import CorruptFileWarning

    dev = torch.device("cpu")
    first = recurrence.load_or_measure(TINY, dev, min_run_time=0.01)
    path = recurrence.cache_path(first["key"])
    path.write_text('{"key": "not json')
    with pytest.warns(CorruptFileWarning, match=path.name):
        again = recurrence.load_or_measure(TINY, dev, min_run_time=0.01)
    assert again["key"] == first["key"] and path.with_name(path.name + ".corrupt").exists()
