import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from book.attention import (
    FlashAttentionFunction,
    LinformerProjection,
    attention_flops,
    elu_plus_one,
    flash_attention,
    linear_attention,
    linformer_attention,
    linformer_projections,
    lsh_attention,
    lsh_buckets,
    naive_attention,
    naive_vs_flash_hbm_bytes,
    score_bytes,
    sliding_window_attention,
)

# (batch, heads, n, d_head): odd n, n not a multiple of the blocks, batch * heads <= 4
SHAPES = [(1, 1, 1, 16), (2, 1, 37, 16), (1, 3, 61, 32), (2, 2, 97, 64), (1, 2, 45, 128)]
CAUSAL = [False, True]


def qkv(shape, dtype=torch.float32, seed=0, d_v=None):
    generator = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(shape, generator=generator, dtype=dtype) for _ in range(2))
    v = torch.randn(*shape[:3], d_v or shape[3], generator=generator, dtype=dtype)
    return q, k, v


def masked_attention(q, k, v, allowed, scale=None, score_shift=None):
    """Dense softmax attention over the allowed (query, key) pairs; a query with none gets 0."""
    scores = (q @ k.transpose(-2, -1)) * (scale or 1 / math.sqrt(q.shape[-1]))
    if score_shift is not None:
        scores = scores + score_shift
    p = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    return p @ v


def causal_mask(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def shape_id(shape):
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------- exact: naive and flash


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_naive_matches_sdpa(shape, causal):
    q, k, v = qkv(shape)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(naive_attention(q, k, v, causal=causal), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks", [(64, 64), (16, 8), (7, 13), (1, 5), (128, 3)])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_flash_matches_sdpa_in_float32(shape, causal, blocks):
    q, k, v = qkv(shape)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out = flash_attention(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("causal", CAUSAL)
def test_flash_lse_is_the_log_sum_exp_of_the_scores(causal):
    q, k, v = qkv((2, 2, 29, 16), dtype=torch.float64)
    out, lse = flash_attention(q, k, v, causal=causal, block_q=8, block_k=6, return_lse=True, scale=0.3)
    scores = (q @ k.transpose(-2, -1)) * 0.3
    if causal:
        scores = scores.masked_fill(~causal_mask(29), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal, scale=0.3))


def test_flash_value_width_may_differ_and_half_precision_keeps_its_dtype():
    q, k, v = qkv((1, 2, 21, 16), d_v=8)
    torch.testing.assert_close(flash_attention(q, k, v, block_q=4, block_k=4), naive_attention(q, k, v))
    out = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, block_q=8, block_k=8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), naive_attention(q, k, v, causal=True), atol=3e-2, rtol=0)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("causal", CAUSAL)
def test_flash_backward_passes_gradcheck(causal, return_lse):
    q, k, v = (t.requires_grad_() for t in qkv((1, 2, 7, 4), dtype=torch.float64))

    def f(q, k, v):
        return flash_attention(q, k, v, causal=causal, block_q=3, block_k=2, return_lse=return_lse)

    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("blocks", [(16, 8), (5, 11)])
def test_flash_gradients_match_autograd_of_naive(blocks, causal):
    q, k, v = (t.requires_grad_() for t in qkv((2, 2, 45, 16), dtype=torch.float64))
    d_out = torch.randn(2, 2, 45, 16, dtype=torch.float64)
    expected = torch.autograd.grad(naive_attention(q, k, v, causal=causal), (q, k, v), d_out)
    out = flash_attention(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
    assert out.grad_fn.name().startswith("FlashAttentionFunction")
    for got, want in zip(torch.autograd.grad(out, (q, k, v), d_out), expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_flash_function_saves_no_n_by_n_tensor():
    q, k, v = (t.requires_grad_() for t in qkv((1, 1, 50, 8)))
    out, _ = FlashAttentionFunction.apply(q, k, v, True, 16, 16, 0.25)
    assert all(t.numel() <= 50 * 8 for t in out.grad_fn.saved_tensors)


# --------------------------------------------------------------------------- sliding window


def window_mask(n, window, causal):
    offset = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # i - j
    inside = offset.abs() < window
    return inside & (offset >= 0) if causal else inside


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_full_window_is_exact(shape, causal):
    q, k, v = qkv(shape)
    expected = naive_attention(q, k, v, causal=causal)
    for window in (shape[2], shape[2] + 10):
        torch.testing.assert_close(sliding_window_attention(q, k, v, window, causal=causal), expected)


@pytest.mark.parametrize("window", [1, 2, 5, 33, 40])
@pytest.mark.parametrize("causal", CAUSAL)
def test_sliding_window_matches_masked_reference(window, causal):
    q, k, v = qkv((2, 2, 83, 32))
    expected = masked_attention(q, k, v, window_mask(83, window, causal))
    torch.testing.assert_close(sliding_window_attention(q, k, v, window, causal=causal), expected)


def test_window_of_one_returns_the_values():
    q, k, v = qkv((1, 2, 19, 16))
    for causal in CAUSAL:
        torch.testing.assert_close(sliding_window_attention(q, k, v, 1, causal=causal), v)


# --------------------------------------------------------------------------- Linformer


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_linformer_with_identity_projections_is_exact(shape):
    q, k, v = qkv(shape)
    eye = torch.eye(shape[2])
    expected = naive_attention(q, k, v)
    torch.testing.assert_close(linformer_attention(q, k, v, proj_k=eye, proj_v=eye), expected)
    torch.testing.assert_close(linformer_attention(q, k, v, proj_k=eye), expected)  # E shared with F


def test_linformer_random_projections_follow_the_seed():
    q, k, v = qkv((2, 2, 41, 16))
    proj_k, proj_v = linformer_projections(41, 8, seed=3)
    assert proj_k.shape == proj_v.shape == (8, 41) and not torch.equal(proj_k, proj_v)
    out = linformer_attention(q, k, v, rank=8, seed=3)
    assert out.shape == q.shape
    torch.testing.assert_close(out, linformer_attention(q, k, v, proj_k=proj_k, proj_v=proj_v))
    all_pairs = torch.ones(41, 8, dtype=torch.bool)
    torch.testing.assert_close(out, masked_attention(q, proj_k @ k, proj_v @ v, all_pairs))
    assert not torch.allclose(out, linformer_attention(q, k, v, rank=8, seed=4))


def test_linformer_projection_module_learns_e_and_f():
    torch.manual_seed(0)
    module = LinformerProjection(n=23, rank=5)
    assert module.proj_k.shape == module.proj_v.shape == (5, 23)
    q, k, v = qkv((1, 2, 23, 16))
    out = module(q, k, v)
    torch.testing.assert_close(out, linformer_attention(q, k, v, proj_k=module.proj_k, proj_v=module.proj_v))
    out.square().sum().backward()
    assert module.proj_k.grad.abs().sum() > 0 and module.proj_v.grad.abs().sum() > 0


# --------------------------------------------------------------------------- linear attention


def linear_reference(q, k, v, causal, feature_map=elu_plus_one, eps=1e-6):
    """The same formula with the n x n matrix phi(Q) phi(K)^T written out."""
    a = feature_map(q) @ feature_map(k).transpose(-2, -1)
    if causal:
        a = a.tril()
    return (a @ v) / (a.sum(dim=-1, keepdim=True) + eps)


@pytest.mark.parametrize("chunk_size", [64, 1, 10])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_linear_attention_matches_quadratic_form(shape, causal, chunk_size):
    q, k, v = qkv(shape, dtype=torch.float64)
    expected = linear_reference(q, k, v, causal)
    torch.testing.assert_close(linear_attention(q, k, v, causal=causal, chunk_size=chunk_size), expected)


def test_linear_attention_with_another_feature_map_and_width():
    q, k, v = qkv((1, 2, 31, 16), dtype=torch.float64, d_v=8)

    def feature_map(x):  # wider features than d_head
        return torch.cat([F.relu(x), F.relu(-x)], dim=-1) + 0.1

    for causal in CAUSAL:
        out = linear_attention(q, k, v, causal=causal, feature_map=feature_map, eps=0.0, chunk_size=8)
        torch.testing.assert_close(out, linear_reference(q, k, v, causal, feature_map, eps=0.0))


# --------------------------------------------------------------------------- LSH attention


@pytest.mark.parametrize("n_rounds", [1, 3])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_lsh_with_one_bucket_and_one_chunk_is_exact(shape, causal, n_rounds):
    q, k, v = qkv(shape)
    out = lsh_attention(q, k, v, n_buckets=1, n_rounds=n_rounds, chunk_size=shape[2], causal=causal)
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal))
    # chunk_size defaults to ceil(n / n_buckets), the whole sequence here
    torch.testing.assert_close(lsh_attention(q, k, v, n_buckets=1, causal=causal), out)


def lsh_allowed(q, k, n_buckets, n_rounds, chunk_size, seed):
    """(query, key) pairs that share a chunk, or key one chunk before, in some round: counted, not sorted."""
    n = q.shape[2]
    buckets = lsh_buckets(torch.cat([q, k], dim=2), n_buckets, n_rounds, seed)
    position = torch.arange(n).repeat(2)
    is_key = (torch.arange(2 * n) >= n).long()
    allowed = torch.zeros(*q.shape[:3], n, dtype=torch.bool)
    for r in range(n_rounds):
        key = (buckets[r] * n + position) * 2 + is_key
        rank = (key[..., None, :] < key[..., :, None]).sum(dim=-1)  # items sorted before each item
        chunk = rank // (2 * chunk_size)
        gap = chunk[..., :n, None] - chunk[..., None, n:]
        allowed |= (gap == 0) | (gap == 1)
    return allowed


@pytest.mark.parametrize("n_buckets, n_rounds, chunk_size", [(4, 1, None), (8, 2, 6), (2, 3, 5), (6, 2, 9)])
@pytest.mark.parametrize("causal", CAUSAL)
def test_lsh_is_softmax_over_the_union_of_rounds(n_buckets, n_rounds, chunk_size, causal):
    q, k, v = qkv((2, 2, 53, 16), dtype=torch.float64)
    out = lsh_attention(q, k, v, n_buckets=n_buckets, n_rounds=n_rounds, chunk_size=chunk_size,
                        causal=causal, seed=1)
    allowed = lsh_allowed(q, k, n_buckets, n_rounds, chunk_size or math.ceil(53 / n_buckets), seed=1)
    if causal:
        allowed &= causal_mask(53)
    assert 0 < allowed.float().mean() < 1  # a real approximation, not all pairs
    torch.testing.assert_close(out, masked_attention(q, k, v, allowed))


@pytest.mark.parametrize("causal", CAUSAL)
def test_lsh_shared_qk_attends_to_itself_only_as_a_last_resort(causal):
    q, _, v = qkv((1, 2, 41, 16), dtype=torch.float64)
    out = lsh_attention(q, q, v, n_buckets=4, n_rounds=2, chunk_size=7, causal=causal, seed=2, shared_qk=True)
    keys = F.normalize(q, dim=-1)
    allowed = lsh_allowed(q, keys, 4, 2, 7, seed=2)
    assert allowed.diagonal(dim1=-2, dim2=-1).all()  # a query and its own key share every bucket
    if causal:
        allowed &= causal_mask(41)
    expected = masked_attention(q, keys, v, allowed, score_shift=-1e5 * torch.eye(41, dtype=torch.float64))
    torch.testing.assert_close(out, expected)
    if causal:  # the first position has only itself
        torch.testing.assert_close(out[:, :, 0], v[:, :, 0])


def test_lsh_buckets_and_seeds():
    q, k, v = qkv((2, 2, 37, 16))
    buckets = lsh_buckets(q, 8, n_rounds=3, seed=0)
    assert buckets.shape == (3, 2, 2, 37) and buckets.min() >= 0 and buckets.max() < 8
    torch.testing.assert_close(lsh_buckets(q * 5.0, 8, n_rounds=3, seed=0), buckets)  # the norm does not matter
    assert torch.equal(lsh_buckets(-q, 2, seed=4), 1 - lsh_buckets(q, 2, seed=4))  # antipodes swap
    out = lsh_attention(q, k, v, seed=7)
    torch.testing.assert_close(lsh_attention(q, k, v, seed=7), out)
    assert not torch.allclose(lsh_attention(q, k, v, seed=8), out)


# --------------------------------------------------------------------------- gradients of the others


@pytest.mark.parametrize("name, variant", [
    ("sliding window", lambda q, k, v: sliding_window_attention(q, k, v, 9, causal=True)),
    ("linear", lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=6)),
    ("lsh", lambda q, k, v: lsh_attention(q, k, v, n_buckets=4, n_rounds=2, chunk_size=5, causal=True)),
    ("linformer", lambda q, k, v: linformer_attention(q, k, v, rank=6)),
])
def test_variants_pass_gradcheck(name, variant):
    q, k, v = (t.requires_grad_() for t in qkv((1, 1, 11, 4), dtype=torch.float64))
    assert torch.autograd.gradcheck(variant, (q, k, v), fast_mode=True)


# --------------------------------------------------------------------------- bad input

Q, K, V = qkv((1, 2, 9, 8))


@pytest.mark.parametrize("call, match", [
    (lambda: naive_attention(Q[0], K, V), "q must be 4-D"),
    (lambda: naive_attention(Q, K[:, :, :5], V), "share"),
    (lambda: naive_attention(Q, K, V[:1, :1]), "share"),
    (lambda: naive_attention(Q, K[..., :4], V), "d_head"),
    (lambda: naive_attention(Q, K, V.double()), "dtype"),
    (lambda: naive_attention(Q, K, V, scale=-1.0), "scale"),
    (lambda: flash_attention(Q, K, V, block_q=0), "block_q"),
    (lambda: flash_attention(Q, K, V, block_k=2.5), "block_k"),
    (lambda: sliding_window_attention(Q, K, V, 0), "window"),
    (lambda: linformer_attention(Q, K, V, rank=4, causal=True), "causal"),
    (lambda: linformer_attention(Q, K, V, rank=10), "rank"),
    (lambda: linformer_attention(Q, K, V, rank=0), "rank"),
    (lambda: linformer_attention(Q, K, V), "rank"),
    (lambda: linformer_attention(Q, K, V, proj_k=torch.eye(8)), "proj_k"),
    (lambda: linformer_attention(Q, K, V, proj_k=torch.eye(9), proj_v=torch.eye(9)[:3]), "proj_v"),
    (lambda: linformer_attention(Q, K, V, proj_v=torch.eye(9)), "proj_v"),
    (lambda: linformer_attention(Q, K, V, rank=3, proj_k=torch.eye(9)), "rank"),
    (lambda: LinformerProjection(4, 5), "rank"),
    (lambda: linear_attention(Q, K, V, chunk_size=0), "chunk_size"),
    (lambda: linear_attention(Q, K, V, feature_map="elu"), "feature_map"),
    (lambda: linear_attention(Q, K, V, eps=-1.0), "eps"),
    (lambda: lsh_attention(Q, K, V, n_buckets=0), "n_buckets"),
    (lambda: lsh_attention(Q, K, V, n_buckets=3), "n_buckets"),
    (lambda: lsh_attention(Q, K, V, n_rounds=0), "n_rounds"),
    (lambda: lsh_attention(Q, K, V, chunk_size=0), "chunk_size"),
    (lambda: lsh_attention(Q, K, V, shared_qk=True), "shared_qk"),
    (lambda: attention_flops(0, 64, 12), "n"),
    (lambda: score_bytes(128, 0), "n_heads"),
    (lambda: naive_vs_flash_hbm_bytes(128, 64, sram_bytes=-1), "sram_bytes"),
])
def test_bad_arguments_raise_naming_them(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# --------------------------------------------------------------------------- costs


def test_attention_flops_match_torch_flop_counter():
    batch, heads, n, d = 2, 3, 40, 16
    q, k, v = qkv((batch, heads, n, d))
    with FlopCounterMode(display=False) as counter:
        naive_attention(q, k, v)
    assert counter.get_total_flops() == attention_flops(n, d, heads, batch=batch) == 4 * batch * heads * n * n * d


def test_causal_flops_count_the_pairs_on_and_below_the_diagonal():
    assert attention_flops(1, 8, 1, causal=True) == attention_flops(1, 8, 1) == 4 * 8
    assert attention_flops(100, 64, 2, batch=3, causal=True) == 3 * 2 * 4 * 64 * (100 * 101 // 2)


def test_score_bytes():
    assert score_bytes(2048, 16, batch=8) == 8 * 16 * 2048**2 * 4
    assert score_bytes(1024, 1, bytes_per_element=2) == 2 * 2**20


def test_hbm_model_of_dao_et_al():
    d, sram = 64, 64 * 1024  # 64 KiB of SRAM, fp16: 32768 elements, blocks of 32768 / (4 * 64) = 128 keys
    small = naive_vs_flash_hbm_bytes(1024, d, sram)
    assert small["naive"] == 2 * (4 * 1024 * d + 4 * 1024**2)
    assert small["block_k"] == 128
    assert small["flash"] == 2 * (2 * 1024 * d + (1024 // 128) * (3 * 1024 * d + 4 * 1024))
    assert small["flash"] < small["naive"]
    # flash traffic ~ n^2 d^2 / M: 4x the sequence ~ 16x the bytes; 4x the SRAM ~ 1/4 the bytes
    big = naive_vs_flash_hbm_bytes(4096, d, sram)
    assert 14 < big["flash"] / small["flash"] < 16
    assert 3.5 < big["flash"] / naive_vs_flash_hbm_bytes(4096, d, 4 * sram)["flash"] < 4
    # with SRAM too small for a block of keys, tiling cannot save anything
    tiny = naive_vs_flash_hbm_bytes(1024, d, sram_bytes=2 * 4 * d)
    assert tiny["block_k"] == 1 and tiny["flash"] > tiny["naive"]
