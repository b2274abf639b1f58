"""The KV cache gives the model's own logits and tokens; speculative decoding gives the target's tokens."""

import pytest
import torch

from book.inference import (KVCache, accept_greedy, expected_tokens_per_step, generate, kv_cache_bytes,
                            speculative_generate, step_cost)
from book.model import GPT, GPTConfig

CFG = GPTConfig(n_layer=2, d_model=32, n_head=4, n_ctx=48, vocab_size=13)


def model(cfg=CFG, seed=0, scale=1.0):
    torch.manual_seed(seed)
    m = GPT(cfg).eval()
    with torch.no_grad():  # larger weights than at initialisation: confident, varied predictions
        for p in m.parameters():
            p.mul_(scale)
    return m


def test_kv_cache_bytes_formula_and_published_opt13b():
    assert kv_cache_bytes(2, 3, 5, 7, batch_size=11, bytes_per_value=4) == 2 * 2 * 3 * 5 * 4 * 7 * 11
    # OPT-13B: 2 (key, value) x 5120 hidden x 40 layers x 2 bytes = 800 KB per token (Kwon et al. 2023, sec. 3)
    assert kv_cache_bytes(40, 40, 128, 1) == 819_200
    # LLaMA-2-70B's grouped-query attention: 8 KV heads instead of 64 (Touvron et al. 2023)
    assert kv_cache_bytes(80, 64, 128, 1) == 8 * kv_cache_bytes(80, 8, 128, 1)


def test_cache_tensors_hold_the_formula_bytes():
    cache = KVCache(CFG, 3)
    assert cache.nbytes == kv_cache_bytes(CFG.n_layer, CFG.n_head, CFG.d_head, CFG.n_ctx, batch_size=3,
                                          bytes_per_value=4)
    assert cache.length == 0


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_cached_logits_equal_full_forward(attention):
    cfg = GPTConfig(n_layer=2, d_model=32, n_head=4, n_ctx=48, vocab_size=13, attention=attention)
    m = model(cfg)
    x = torch.randint(0, 13, (3, 40), generator=torch.Generator().manual_seed(1))
    full = m(x)[0]
    cache = KVCache(cfg, 3)
    pieces = [m(x[:, :9], kv_cache=cache)[0], m(x[:, 9:14], kv_cache=cache)[0]]  # prefill, then 5 at once
    pieces += [m(x[:, i:i + 1], kv_cache=cache)[0] for i in range(14, 40)]  # then one at a time
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 4, 17])
def test_greedy_generation_is_the_same_with_and_without_cache(prompt_len):
    m = model(scale=3.0)
    prompt = torch.randint(0, 13, (4, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    with_cache = generate(m, prompt, CFG.n_ctx - prompt_len)
    without = generate(m, prompt, CFG.n_ctx - prompt_len, kv_cache=False)
    assert with_cache.shape == (4, CFG.n_ctx)
    assert torch.equal(with_cache[:, :prompt_len], prompt)
    assert torch.equal(with_cache, without)


def test_sampling_is_reproducible_and_same_with_cache():
    m = model(scale=3.0)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    a = generate(m, prompt, 20, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    b = generate(m, prompt, 20, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0),
                 kv_cache=False)
    assert torch.equal(a, b)


def test_without_cache_generation_slides_past_n_ctx():
    m = model()
    out = generate(m, torch.zeros(1, CFG.n_ctx, dtype=torch.long), 5, kv_cache=False)
    assert out.shape == (1, CFG.n_ctx + 5)


@pytest.mark.parametrize("gamma", [1, 2, 4, 8])
def test_speculative_equals_target_greedy(gamma):
    target = model(scale=3.0)
    draft = model(GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=48, vocab_size=13), seed=5, scale=3.0)
    prompt = torch.randint(0, 13, (1, 6), generator=torch.Generator().manual_seed(2))
    reference = generate(target, prompt, 40)
    result = speculative_generate(target, draft, prompt, 40, gamma)
    assert torch.equal(result.tokens, reference)
    assert result.accepted <= result.proposed
    # every step yields its accepted drafts plus one token of the target's
    assert result.accepted + result.target_steps == 40
    assert result.tokens_per_step == 40 / result.target_steps
    assert 0 <= result.acceptance_rate <= 1


@pytest.mark.parametrize("gamma", [1, 3, 8])
def test_draft_equal_to_target_is_always_accepted(gamma):
    target = model(scale=3.0)
    prompt = torch.randint(0, 13, (1, 3), generator=torch.Generator().manual_seed(3))
    result = speculative_generate(target, target, prompt, 30, gamma)
    assert torch.equal(result.tokens, generate(target, prompt, 30))
    assert result.acceptance_rate == 1.0 and result.rejected == 0
    assert result.accepted == result.proposed


def test_accept_greedy_step():
    logits = torch.eye(5)[[1, 2, 0, 4]]  # the target's argmax: 1, 2, 0, 4
    assert accept_greedy(torch.tensor([1, 2, 3]), logits)[0] == 2
    assert accept_greedy(torch.tensor([1, 2, 3]), logits)[1].tolist() == [1, 2, 0]
    assert accept_greedy(torch.tensor([1, 2, 0]), logits)[1].tolist() == [1, 2, 0, 4]
    assert accept_greedy(torch.tensor([3, 2, 0]), logits)[1].tolist() == [1]


def test_expected_tokens_per_step():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_step(0.8, 8) == pytest.approx(sum(0.8 ** i for i in range(9)))


def test_step_cost_decode_is_bandwidth_bound_prefill_is_not():
    flops, moved = step_cost(CFG, batch_size=1, new_tokens=1, past_tokens=10)
    assert flops / moved < 1  # about one multiply-add per fp32 weight read
    flops_b, moved_b = step_cost(CFG, batch_size=64, new_tokens=1, past_tokens=10)
    assert flops_b / moved_b > 10 * flops / moved
    pf, pm = step_cost(CFG, batch_size=1, new_tokens=40)
    assert pf / pm > 10 * flops / moved


def test_bad_input_names_the_argument():
    m = model()
    ok = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="gamma"):
        speculative_generate(m, m, ok, 5, 0)
    with pytest.raises(ValueError, match="prompt"):
        generate(m, torch.zeros(1, CFG.n_ctx + 1, dtype=torch.long), 1, kv_cache=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, ok, CFG.n_ctx)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(m, m, ok, CFG.n_ctx, 2)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_step(1.5, 2)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_step(-0.1, 2)
    with pytest.raises(ValueError, match="gamma"):
        expected_tokens_per_step(0.5, 0)
    with pytest.raises(ValueError, match="batch"):
        speculative_generate(m, m, torch.zeros(2, 4, dtype=torch.long), 5, 2)
    with pytest.raises(ValueError, match="n_tokens"):
        kv_cache_bytes(1, 1, 1, -1)
    with pytest.raises(TypeError, match="n_layer"):
        kv_cache_bytes(True, 1, 1, 1)
    with pytest.raises(ValueError, match="attention"):
        lsh = GPT(GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=16, vocab_size=13, attention="lsh"))
        lsh(ok, kv_cache=KVCache(lsh.config, 1))
    cache = KVCache(CFG, 1)
    with pytest.raises(ValueError, match="n_ctx"):
        m(torch.zeros(1, CFG.n_ctx + 1, dtype=torch.long)[:, :CFG.n_ctx], kv_cache=cache)
        m(ok, kv_cache=cache)
    with pytest.raises(ValueError, match="length"):
        cache.truncate(cache.length + 1)
    with pytest.raises(ValueError, match="vocab"):
        speculative_generate(m, model(GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=48, vocab_size=7)),
                             ok, 5, 2)
