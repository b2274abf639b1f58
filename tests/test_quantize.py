"""int8 per-channel quantization: error within half a step, 4x fewer bytes, the model nearly unchanged."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from book.model import GPT, GPTConfig
from book.quantize import Int8Linear, dequantize, model_bytes, quantize_model, quantize_per_channel


@settings(max_examples=25, deadline=None, database=None, derandomize=True)
@given(rows=st.integers(1, 8), cols=st.integers(1, 16), seed=st.integers(0, 1000),
       log_scale=st.floats(-6, 3))
def test_error_is_at_most_half_a_step_per_row(rows, cols, seed, log_scale):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 10 ** log_scale
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.shape == (rows,)
    assert int(q.abs().max()) == 127  # the largest weight of each row maps to +-127
    error = (dequantize(q, scale) - w).abs()
    assert bool((error <= scale[:, None] / 2 * (1 + 1e-5)).all())


def test_zero_row_and_exact_values():
    w = torch.tensor([[0.0, 0.0], [1.27, -0.635]])
    q, scale = quantize_per_channel(w)
    assert q.tolist() == [[0, 0], [127, -64]]  # -63.5 rounds to the even -64
    assert torch.equal(dequantize(q, scale)[0], torch.zeros(2))


def test_int8_linear_matches_the_dequantized_layer():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(4, 16)
    q, scale = quantize_per_channel(linear.weight)
    torch.testing.assert_close(layer(x), x @ dequantize(q, scale).T + linear.bias)
    torch.testing.assert_close(layer(x), linear(x), atol=0.02, rtol=0.05)


def test_quantize_model_bytes_and_outputs():
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=11)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    quantized = quantize_model(model)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # the original is untouched
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not model.lm_head]
    weights = sum(m.weight.numel() for m in linears)
    rows = sum(m.weight.shape[0] for m in linears)
    # each quantized weight: 4 bytes -> 1, plus one fp32 scale per output channel
    assert model_bytes(model) - model_bytes(quantized) == 3 * weights - 4 * rows
    assert quantized.lm_head.weight is quantized.token_embedding.weight  # tied: kept fp32, still tied
    x = torch.randint(0, 11, (2, 32), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(quantized(x)[0], model(x)[0], atol=0.05, rtol=0.05)


def test_untied_output_layer_is_quantized():
    cfg = GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=8, vocab_size=11, tie_embeddings=False)
    assert isinstance(quantize_model(GPT(cfg)).lm_head, Int8Linear)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="weight"):
        quantize_per_channel(torch.zeros(3))
    with pytest.raises(ValueError, match="weight"):
        quantize_per_channel(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="weight"):
        quantize_per_channel(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="scale"):
        dequantize(torch.zeros(2, 2, dtype=torch.int8), torch.ones(3))
    with pytest.raises(TypeError, match="model"):
        quantize_model("gpt")
    with pytest.raises(TypeError, match="linear"):
        Int8Linear.from_linear(nn.Conv1d(1, 1, 1))
