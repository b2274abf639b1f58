import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from book.kaplan import kaplan_n
from book.model import GPT, GPTConfig, count_params, flops_per_token, param_breakdown

CONFIGS = [
    GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=81),
    GPTConfig(n_layer=3, d_model=48, n_head=3, n_ctx=16, vocab_size=256, d_ff=100),
    GPTConfig(n_layer=1, d_model=32, n_head=2, n_ctx=8, vocab_size=50, bias=False),
    GPTConfig(n_layer=2, d_model=32, n_head=4, n_ctx=8, vocab_size=50, tie_embeddings=False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c.n_layer}-d{c.d_model}-bias{c.bias}-tie{c.tie_embeddings}")
def test_count_params_is_exact(cfg):
    model = GPT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    embedding = model.token_embedding.weight.numel() + model.position_embedding.weight.numel()
    if not cfg.tie_embeddings:
        embedding += model.lm_head.weight.numel()
    assert count_params(cfg, embedding=False) == count_params(cfg) - embedding
    assert sum(param_breakdown(cfg).values()) == count_params(cfg)


def test_d_ff_defaults_to_four_d_model():
    assert GPTConfig(n_layer=1, d_model=24, n_head=2, n_ctx=4, vocab_size=5).d_ff == 96


def test_kaplan_approximation_leaves_out_only_biases_and_norms():
    cfg = GPTConfig(n_layer=4, d_model=128, n_head=4, n_ctx=64, vocab_size=81)
    assert kaplan_n(cfg.n_layer, cfg.d_model, cfg.d_ff) == 12 * 4 * 128**2
    no_bias = GPTConfig(n_layer=4, d_model=128, n_head=4, n_ctx=64, vocab_size=81, bias=False)
    # without biases, only the LayerNorm gains (2 per block + 1 final, d each) are left out
    assert count_params(no_bias, embedding=False) - kaplan_n(4, 128) == (2 * 4 + 1) * 128


def test_flops_per_token_terms():
    cfg = CONFIGS[0]
    n = count_params(cfg, embedding=False)
    assert flops_per_token(cfg, context=False) == 2 * n
    assert flops_per_token(cfg) == 2 * n + 2 * cfg.n_layer * cfg.n_ctx * cfg.d_model
    assert flops_per_token(cfg, training=True) == 3 * flops_per_token(cfg)
    assert flops_per_token(cfg, unembedding=True) - flops_per_token(cfg) == 2 * cfg.d_model * cfg.vocab_size


def test_flops_match_torch_flop_counter():
    # torch counts matmuls only: weights' 2 FLOPs per token, plus both attention products (QK^T and AV).
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=81, bias=False)
    batch = 3
    idx = torch.zeros(batch, cfg.n_ctx, dtype=torch.long)
    # The math backend decomposes attention into matmuls the counter sees (it has no formula for the CPU fused kernel).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        GPT(cfg)(idx)
    per_token = counter.get_total_flops() / (batch * cfg.n_ctx)
    matmul_weights = 12 * cfg.n_layer * cfg.d_model**2
    attention = 4 * cfg.n_layer * cfg.n_ctx * cfg.d_model  # full (unmasked) T x T products
    assert per_token == 2 * matmul_weights + attention + 2 * cfg.d_model * cfg.vocab_size


def test_forward_shapes_and_loss():
    cfg = CONFIGS[0]
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (8, cfg.n_ctx))
    targets = torch.randint(0, cfg.vocab_size, (8, cfg.n_ctx))
    logits, loss = model(idx, targets)
    assert logits.shape == (8, cfg.n_ctx, cfg.vocab_size)
    # at initialisation the prediction is nearly uniform: loss on random targets ~ log V
    assert abs(loss.item() - torch.log(torch.tensor(cfg.vocab_size)).item()) < 0.1


def test_attention_is_causal():
    cfg = CONFIGS[0]
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, cfg.n_ctx))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % cfg.vocab_size
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)  # the future cannot leak backwards


def test_generate_appends_tokens():
    cfg = CONFIGS[0]
    out = GPT(cfg).generate(torch.zeros(1, 1, dtype=torch.long), 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=30, n_head=4), "divisible"),
    (dict(n_layer=0), "n_layer"),
    (dict(d_model=-8), "d_model"),
    (dict(n_ctx=0), "n_ctx"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_head=0), "n_head"),
    (dict(d_ff=0), "d_ff"),
    (dict(n_layer=2.0), "n_layer"),
])
def test_bad_config_raises(kwargs, match):
    base = dict(n_layer=1, d_model=32, n_head=4, n_ctx=8, vocab_size=10)
    with pytest.raises((ValueError, TypeError), match=match):
        GPTConfig(**(base | kwargs))


def test_too_long_input_raises():
    cfg = CONFIGS[0]
    with pytest.raises(ValueError, match="n_ctx"):
        GPT(cfg)(torch.zeros(1, cfg.n_ctx + 1, dtype=torch.long))


def test_layer_matmuls_cover_the_weight_matrices():
    from book.model import layer_matmuls
    cfg = CONFIGS[1]
    ops = layer_matmuls(cfg, batch_size=2)
    weights = sum(n * k for name, (m, n, k, c) in ops.items() if name != "attention scores")
    assert weights * cfg.n_layer == kaplan_n(cfg.n_layer, cfg.d_model, cfg.d_ff)  # 2 d (2 d + d_ff) per layer: the matrices Kaplan counts
    m, n, k, count = ops["attention scores"]
    assert (m, n, k, count) == (cfg.n_ctx, cfg.n_ctx, cfg.d_head, 2 * cfg.n_head)
    with pytest.raises(ValueError, match="batch_size"):
        layer_matmuls(cfg, 0)


@pytest.mark.parametrize("moe_every", [1, 2])
def test_moe_config_counts_are_exact(moe_every):
    from book.moe import MoE
    cfg = GPTConfig(n_layer=4, d_model=32, n_head=4, n_ctx=16, vocab_size=20, n_experts=4, expert_k=2,
                    moe_every=moe_every)
    model = GPT(cfg)
    assert sum(isinstance(b.mlp, MoE) for b in model.blocks) == cfg.n_moe_layers == 4 // moe_every
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert count_params(cfg, active=True) < count_params(cfg)
    dense = GPTConfig(n_layer=4, d_model=32, n_head=4, n_ctx=16, vocab_size=20)
    # a token's work in an MoE model with k=2 of 4 experts: 2 expert MLPs per MoE layer, plus the router
    assert flops_per_token(cfg, context=False) > flops_per_token(dense, context=False)
    idx = torch.randint(0, 20, (2, 16))
    _, loss = model(idx, idx)
    (loss + model.auxiliary_loss()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "router" in n)


def test_bad_moe_config_raises():
    with pytest.raises(ValueError, match="expert_k"):
        GPTConfig(n_layer=1, d_model=8, n_head=1, n_ctx=4, vocab_size=5, n_experts=2, expert_k=3)
    with pytest.raises(ValueError, match="routing"):
        GPTConfig(n_layer=1, d_model=8, n_head=1, n_ctx=4, vocab_size=5, n_experts=2, routing="random")


# --------------------------------------------------------------------------- the attention option

from book.model import ATTENTIONS, causal_attention  # noqa: E402

ATTN_BASE = dict(n_layer=2, d_model=32, n_head=2, n_ctx=24, vocab_size=17)


def _outputs(cfg, idx):
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        return model(idx)[0]


def test_attention_defaults_to_sdpa():
    assert GPTConfig(**ATTN_BASE).attention == "sdpa"


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_each_attention_variant_runs_forward_and_backward(kind):
    cfg = GPTConfig(**ATTN_BASE, attention=kind, attention_window=5, lsh_buckets=4, lsh_rounds=2,
                    flash_block=7, linear_chunk=5)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 19))  # shorter than n_ctx, not a multiple of any block
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 19, cfg.vocab_size)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kind", ["sdpa", "naive", "flash", "linear", "sliding_window"])
def test_each_variant_is_causal(kind):
    # Changing a later token never changes an earlier position's logits.
    cfg = GPTConfig(**ATTN_BASE, attention=kind, attention_window=4, lsh_buckets=2, flash_block=5)
    idx = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % cfg.vocab_size
    torch.testing.assert_close(_outputs(cfg, idx)[:, :12], _outputs(cfg, changed)[:, :12])


def test_lsh_masks_future_values_but_its_buckets_see_the_future():
    # LSH never attends to a later position, but WHICH earlier keys share a query's chunk depends on
    # where later items sort: a later token can change an earlier output (a documented leak).
    idx = torch.randint(0, 17, (2, 20), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 17
    leaky = GPTConfig(**ATTN_BASE, attention="lsh", lsh_buckets=4)
    assert (_outputs(leaky, idx)[:, :12] - _outputs(leaky, changed)[:, :12]).abs().max() > 1e-4
    # One bucket and one chunk: no hashing, no leak.
    whole = GPTConfig(**ATTN_BASE, attention="lsh", lsh_buckets=1, lsh_chunk=24)
    torch.testing.assert_close(_outputs(whole, idx)[:, :12], _outputs(whole, changed)[:, :12])


def test_exact_variants_agree_with_sdpa():
    idx = torch.randint(0, 17, (2, 24), generator=torch.Generator().manual_seed(2))
    reference = _outputs(GPTConfig(**ATTN_BASE), idx)
    for kind, extra in [("naive", {}), ("flash", {"flash_block": 5}), ("flash", {})]:
        torch.testing.assert_close(_outputs(GPTConfig(**ATTN_BASE, attention=kind, **extra), idx), reference,
                                   atol=1e-5, rtol=1e-5)


def test_window_covering_the_context_is_exact():
    idx = torch.randint(0, 17, (2, 24), generator=torch.Generator().manual_seed(3))
    reference = _outputs(GPTConfig(**ATTN_BASE), idx)
    for window in (24, 100):
        cfg = GPTConfig(**ATTN_BASE, attention="sliding_window", attention_window=window)
        torch.testing.assert_close(_outputs(cfg, idx), reference, atol=1e-5, rtol=1e-5)
    # A short window is not exact.
    short = _outputs(GPTConfig(**ATTN_BASE, attention="sliding_window", attention_window=3), idx)
    assert (short - reference).abs().max() > 1e-3


def test_lsh_with_one_bucket_and_a_whole_chunk_is_exact():
    idx = torch.randint(0, 17, (2, 24), generator=torch.Generator().manual_seed(4))
    cfg = GPTConfig(**ATTN_BASE, attention="lsh", lsh_buckets=1, lsh_chunk=24)
    torch.testing.assert_close(_outputs(cfg, idx), _outputs(GPTConfig(**ATTN_BASE), idx), atol=1e-5, rtol=1e-5)


def test_causal_attention_dispatch_matches_the_library():
    from book import attention as A
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 13, 16, generator=g) for _ in range(3))
    cfg = GPTConfig(**ATTN_BASE, attention="linear", linear_chunk=4)
    torch.testing.assert_close(causal_attention(q, k, v, cfg), A.linear_attention(q, k, v, causal=True))
    cfg = GPTConfig(**ATTN_BASE, attention="lsh", lsh_buckets=4, lsh_rounds=2)
    torch.testing.assert_close(causal_attention(q, k, v, cfg, seed=3),
                               A.lsh_attention(q, k, v, n_buckets=4, n_rounds=2, causal=True, seed=3))


@pytest.mark.parametrize("bad, match", [
    (dict(attention="flashy"), "attention must be one of"),
    (dict(attention="linformer"), "future"),
    (dict(attention="sliding_window", attention_window=0), "attention_window"),
    (dict(attention_window=2.5), "attention_window"),
    (dict(flash_block=-1), "flash_block"),
    (dict(linear_chunk=0), "linear_chunk"),
    (dict(lsh_buckets=3), "lsh_buckets"),
    (dict(lsh_buckets=0), "lsh_buckets"),
    (dict(lsh_rounds=0), "lsh_rounds"),
    (dict(lsh_chunk=0), "lsh_chunk"),
    (dict(attention="naive", dropout=0.1), "dropout"),
])
def test_bad_attention_options_raise(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GPTConfig(**ATTN_BASE, **bad)


def test_config_repr_shows_only_what_differs_from_the_defaults():
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=81)
    assert repr(cfg) == "GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=81)"
    moe = GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=81, d_ff=100, n_experts=4,
                    dropout=0.1)
    assert repr(moe) == ("GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=81, d_ff=100, "
                         "dropout=0.1, n_experts=4)")
    assert "d_ff" not in repr(GPTConfig(n_layer=1, d_model=8, n_head=1, n_ctx=4, vocab_size=5, d_ff=32))
    assert eval(repr(moe)) == moe  # still a valid constructor call
