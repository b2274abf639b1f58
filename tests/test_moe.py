import math

import pytest
import torch
import torch.nn.functional as F

from book.model import GPT, MLP, GPTConfig
from book.moe import (MoE, active_params, expert_capacity, expert_choice_routing, load_balancing_loss,
                      moe_params, noisy_top_k_gating, router_z_loss, top_k_gating)

D_MODEL, D_FF, N_EXPERTS = 8, 16, 4


def make_moe(k=2, seed=0, **kwargs) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(D_MODEL, D_FF, N_EXPERTS, k, **kwargs)
    with torch.no_grad():  # init is std 0.02; make the router and biases matter so mistakes show
        moe.router.weight.normal_()
        for p in moe.experts.parameters():
            p.normal_(std=0.5)
    return moe


def tokens(batch=2, time=6, seed=1) -> torch.Tensor:
    return torch.randn(batch, time, D_MODEL, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- gating


def test_top_k_gating_is_a_softmax_over_the_chosen_logits():
    logits = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0))
    weights, experts = top_k_gating(logits, 3)
    assert weights.shape == experts.shape == (3, 5, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    chosen = logits.gather(-1, experts)
    assert (chosen[..., :-1] >= chosen[..., 1:]).all()  # descending logit
    assert (chosen[..., -1:] >= logits.sort(-1, descending=True).values[..., 2:3]).all()  # really the top 3
    torch.testing.assert_close(weights, F.softmax(chosen, dim=-1))


def test_top_k_gating_seed_example():
    # The seed slides' router: 8 experts, top-2 picks experts 4 (3.2) and 0 (2.1), weights 0.75 / 0.25.
    logits = torch.tensor([2.1, 0.3, 1.8, 0.1, 3.2, 0.5, 1.1, 0.8])
    weights, experts = top_k_gating(logits, 2)
    assert experts.tolist() == [4, 0]
    torch.testing.assert_close(weights, torch.tensor([1 / (1 + math.exp(-1.1)), 1 / (1 + math.exp(1.1))]))


def test_switch_gating_keeps_full_softmax_probabilities():
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    weights, experts = top_k_gating(logits, 1, renormalize=False)
    torch.testing.assert_close(weights, F.softmax(logits, -1).max(-1, keepdim=True).values)
    assert torch.equal(experts, logits.argmax(-1, keepdim=True))
    assert torch.equal(top_k_gating(logits, 1)[0], torch.ones(10, 1))  # renormalised top-1 is always 1


def test_noisy_top_k_gating():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    noise_logits = torch.zeros_like(logits)
    clean = top_k_gating(logits, 2)
    for got, want in zip(noisy_top_k_gating(logits, noise_logits, 2, training=False), clean):
        assert torch.equal(got, want)  # no noise at evaluation
    silent = noisy_top_k_gating(logits, torch.full_like(logits, -100.0), 2, training=True)
    torch.testing.assert_close(silent[0], clean[0])  # softplus(-100) ~ 0: no noise
    first = noisy_top_k_gating(logits, noise_logits, 2, generator=torch.Generator().manual_seed(3))
    again = noisy_top_k_gating(logits, noise_logits, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[1], again[1]) and not torch.equal(first[1], clean[1])


def test_expert_choice_fills_every_expert_exactly():
    logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    weights, token_indices = expert_choice_routing(logits, 7)
    assert weights.shape == token_indices.shape == (4, 7)
    for e in range(4):
        assert token_indices[e].unique().numel() == 7  # 7 distinct tokens each
        probs = F.softmax(logits, -1)[:, e]
        torch.testing.assert_close(weights[e], probs[token_indices[e]])
        assert weights[e].min() >= probs.topk(7).values.min()  # and the expert's best 7


def test_expert_choice_layer_takes_capacity_tokens_per_expert():
    moe = make_moe(k=1, routing="expert_choice", capacity_factor=1.5)
    moe(tokens())
    capacity = expert_capacity(12, N_EXPERTS, 1, 1.5)
    assert moe.stats.capacity == capacity == 5
    assert moe.stats.tokens_per_expert.tolist() == [5] * N_EXPERTS
    assert 0 <= moe.stats.dropped_fraction < 1 and float(moe.aux_loss) == 0


# --------------------------------------------------------------------------- auxiliary losses


@pytest.mark.parametrize("k", [1, 2])
def test_load_balancing_loss_is_one_when_uniform(k):
    n_tokens = 4 * N_EXPERTS
    # every expert chosen equally often, every router probability 1/n_experts
    experts = torch.stack([(torch.arange(n_tokens) + j) % N_EXPERTS for j in range(k)], dim=-1)
    probs = torch.full((n_tokens, N_EXPERTS), 1 / N_EXPERTS)
    torch.testing.assert_close(load_balancing_loss(probs, experts, N_EXPERTS), torch.tensor(1.0))


def test_load_balancing_loss_grows_when_routing_collapses():
    n_tokens = 16
    collapsed = torch.zeros(n_tokens, dtype=torch.long)  # top-1 indices without a k dimension
    probs = F.softmax(torch.tensor([8.0, 0, 0, 0]).expand(n_tokens, -1), -1)
    loss = load_balancing_loss(probs, collapsed, N_EXPERTS)
    assert 3.9 < float(loss) <= N_EXPERTS  # up to n_experts when one expert takes everything
    # half the experts idle: f = P = (1/2, 1/2, 0, 0) gives 4 * (1/4 + 1/4) = 2
    half = torch.arange(n_tokens) % 2
    half_probs = F.one_hot(half, N_EXPERTS).float()
    torch.testing.assert_close(load_balancing_loss(half_probs, half, N_EXPERTS), torch.tensor(2.0))
    assert float(load_balancing_loss(half_probs, half, N_EXPERTS)) < float(loss)


def test_router_z_loss():
    torch.testing.assert_close(router_z_loss(torch.zeros(5, 8)), torch.tensor(math.log(8) ** 2))
    assert router_z_loss(torch.full((5, 8), 10.0)) > router_z_loss(torch.zeros(5, 8))


# --------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [1, 2, N_EXPERTS])
def test_identical_experts_give_the_dense_mlp(k, bias):
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(n_layer=1, d_model=D_MODEL, n_head=1, n_ctx=8, vocab_size=5, d_ff=D_FF, bias=bias))
    moe = MoE.from_dense(mlp, N_EXPERTS, k)
    with torch.no_grad():
        moe.router.weight.normal_()
    x = tokens()
    torch.testing.assert_close(moe(x), mlp(x))
    assert moe.stats.dropped_fraction == 0


def test_uniform_gates_over_all_experts_average_them():
    moe = make_moe(k=N_EXPERTS)
    with torch.no_grad():
        moe.router.weight.zero_()
    x = tokens().reshape(-1, D_MODEL)
    mean = torch.stack([moe.experts(x, e) for e in range(N_EXPERTS)]).mean(0)
    torch.testing.assert_close(moe(x), mean)
    assert moe.stats.router_entropy == pytest.approx(math.log(N_EXPERTS))


@pytest.mark.parametrize("routing,k,capacity_factor,bias", [
    ("token_choice", 1, None, True),
    ("token_choice", 2, None, True),
    ("token_choice", 2, None, False),
    ("token_choice", 1, 0.75, True),
    ("token_choice", 2, 0.5, True),  # first choices must outrank second choices
    ("expert_choice", 1, None, True),
    ("expert_choice", 2, 1.5, False),
])
def test_sorted_dispatch_equals_the_token_loop(routing, k, capacity_factor, bias):
    moe = make_moe(k=k, capacity_factor=capacity_factor, bias=bias, routing=routing)
    x = tokens()
    y = moe(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, moe.forward_reference(x))


def test_noisy_router_matches_the_loop_in_eval_mode():
    moe = make_moe(k=2, router_noise=True).eval()
    x = tokens()
    torch.testing.assert_close(moe(x), moe.forward_reference(x))
    moe.train()
    torch.manual_seed(0)
    assert not torch.equal(moe(x), moe.forward_reference(x))  # different noise draws


def test_capacity_drops_the_overflow_of_an_overloaded_expert():
    moe = make_moe(k=1, capacity_factor=1.0)
    with torch.no_grad():  # every token prefers expert 0
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0
    x = tokens(batch=1, time=16)
    x[..., 0] = x[..., 0].abs() + 1
    y = moe(x)[0]
    capacity = expert_capacity(16, N_EXPERTS, 1, 1.0)
    assert moe.stats.capacity == capacity == 4
    assert moe.stats.tokens_per_expert.tolist() == [16, 0, 0, 0]
    assert moe.stats.dropped_fraction == pytest.approx(12 / 16)
    torch.testing.assert_close(y[:capacity], moe.experts(x[0, :capacity], 0))  # gate weight 1 (k = 1)
    assert torch.equal(y[capacity:], torch.zeros(12, D_MODEL))  # dropped: the residual carries them
    assert moe.aux_loss > 3.9


def test_no_capacity_factor_never_drops():
    moe = make_moe(k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0
    x = tokens()
    x[..., 0] = x[..., 0].abs() + 1
    moe(x)
    assert moe.stats.capacity is None and moe.stats.dropped_fraction == 0


@pytest.mark.parametrize("k,renormalize,router_learns", [(2, True, True), (1, False, True), (1, True, False)])
def test_gradients_reach_the_router_through_the_gate_weights(k, renormalize, router_learns):
    moe = make_moe(k=k, renormalize=renormalize)
    moe(tokens()).sum().backward()
    grad = moe.router.weight.grad
    # renormalised top-1: the weight is always 1, so the output carries no gradient to the router
    assert grad is not None and (grad.abs().sum() > 0) == router_learns
    assert all(p.grad.abs().sum() > 0 for p in moe.experts.parameters())


def test_auxiliary_losses_train_the_router():
    moe = make_moe(k=1)
    moe(tokens())
    assert moe.aux_loss.ndim == moe.z_loss.ndim == 0
    (moe.aux_loss + moe.z_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_moe_is_a_drop_in_for_the_gpt_mlp(routing):
    cfg = GPTConfig(n_layer=2, d_model=D_MODEL, n_head=2, n_ctx=8, vocab_size=11, d_ff=D_FF)
    torch.manual_seed(0)
    model = GPT(cfg)
    for block in model.blocks[1::2]:  # every other layer, as in GShard and Switch
        block.mlp = MoE(cfg.d_model, cfg.d_ff, N_EXPERTS, 2, capacity_factor=1.25, routing=routing)
    idx = torch.randint(0, 11, (2, 8))
    _, loss = model(idx, idx)
    aux = sum(block.mlp.aux_loss for block in model.blocks[1::2])
    (loss + 0.01 * aux).backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0


def test_autocast_bf16_runs_and_agrees():
    moe = make_moe(k=2, capacity_factor=1.25)
    x = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = moe(x)
    torch.testing.assert_close(low.float(), moe(x), atol=0.1, rtol=0.05)


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("bias,router_noise", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("n_experts,k", [(1, 1), (4, 2), (8, 1)])
def test_param_counts_are_exact(n_experts, k, bias, router_noise):
    moe = MoE(12, 20, n_experts, k, bias=bias, router_noise=router_noise)
    assert moe_params(12, 20, n_experts, bias, router_noise) == sum(p.numel() for p in moe.parameters())
    routers = [m for m in (moe.router, moe.noise_router) if m is not None]
    per_expert = sum(p.numel() for p in moe.experts.parameters()) // n_experts
    expected = k * per_expert + sum(p.numel() for m in routers for p in m.parameters())
    assert active_params(12, 20, n_experts, k, bias, router_noise) == expected
    dense = MLP(GPTConfig(n_layer=1, d_model=12, n_head=1, n_ctx=4, vocab_size=5, d_ff=20, bias=bias))
    assert per_expert == sum(p.numel() for p in dense.parameters())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call", [
    lambda: top_k_gating(torch.zeros(3, 4), 5),
    lambda: top_k_gating(torch.zeros(3, 4), 0),
    lambda: top_k_gating(torch.zeros(3, 4), 1.5),
    lambda: noisy_top_k_gating(torch.zeros(3, 4), torch.zeros(3, 5), 1),
    lambda: expert_choice_routing(torch.zeros(3, 4), 4),
    lambda: expert_choice_routing(torch.zeros(3, 4), 0),
    lambda: expert_choice_routing(torch.zeros(2, 3, 4), 1),
    lambda: load_balancing_loss(torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.long), 5),
    lambda: load_balancing_loss(torch.zeros(3, 4), torch.zeros(2, 1, dtype=torch.long), 4),
    lambda: load_balancing_loss(torch.zeros(3, 4), torch.full((3, 1), 4), 4),
    lambda: load_balancing_loss(torch.zeros(3, 4), torch.zeros(3, 1), 4),
    lambda: load_balancing_loss(torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.long), 0),
    lambda: router_z_loss(torch.tensor(1.0)),
    lambda: MoE(8, 16, 4, 5),
    lambda: MoE(8, 16, 4, 0),
    lambda: MoE(8, 16, 4, 1, capacity_factor=0),
    lambda: MoE(8, 16, 4, 1, capacity_factor=-1.0),
    lambda: MoE(0, 16, 4, 1),
    lambda: MoE(8, -1, 4, 1),
    lambda: MoE(8, 16, 0, 1),
    lambda: MoE(8, 16, 4.0, 1),
    lambda: MoE(8, 16, 4, 1, routing="hash"),
    lambda: MoE(8, 16, 4, 1)(torch.zeros(2, 3, 7)),
    lambda: MoE(8, 16, 4, 1).forward_reference(torch.zeros(2, 3, 7)),
    lambda: expert_capacity(16, 4, 1, 0.0),
    lambda: expert_capacity(0, 4, 1, 1.0),
    lambda: expert_capacity(16, 4, 5, 1.0),
    lambda: expert_capacity(16, 4, 2, float("inf")),
    lambda: expert_capacity(16, 4, True, 1.0),
    lambda: moe_params(8, 0, 4),
    lambda: active_params(8, 16, 4, 5),
    lambda: active_params(8, 16, 4, 0),
])
def test_bad_input_raises(call):
    with pytest.raises((TypeError, ValueError)):
        call()


# --------------------------------------------------------------------------- accounting and configuration


@pytest.mark.parametrize("k,capacity_factor", [(1, 0.5), (2, 0.75), (2, 1.0), (3, 1.25), (2, None)])
def test_stats_count_every_slot_and_the_dropped_ones(k, capacity_factor):
    moe = make_moe(k=k, capacity_factor=capacity_factor)
    x = tokens(batch=3, time=10)
    moe(x)
    n_tokens = 30
    assert int(moe.stats.tokens_per_expert.sum()) == n_tokens * k  # before capacity: every slot once
    if capacity_factor is None:
        assert moe.stats.capacity is None and moe.stats.dropped_fraction == 0
        return
    capacity = expert_capacity(n_tokens, N_EXPERTS, k, capacity_factor)
    assert moe.stats.capacity == capacity
    kept = moe.stats.tokens_per_expert.clamp(max=capacity).sum()
    assert moe.stats.dropped_fraction == pytest.approx(1 - float(kept) / (n_tokens * k))


def test_top_k_gating_accepts_any_leading_shape_and_keeps_the_device_dtype():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    weights, experts = top_k_gating(logits, 2)
    assert weights.shape == experts.shape == (2, 3, 4, 2)
    assert weights.dtype == torch.float64 and experts.dtype == torch.long


def test_gpt_config_places_moe_layers():
    every = GPTConfig(n_layer=4, d_model=8, n_head=2, n_ctx=8, vocab_size=11, n_experts=4, expert_k=2)
    other = GPTConfig(n_layer=4, d_model=8, n_head=2, n_ctx=8, vocab_size=11, n_experts=4, expert_k=2, moe_every=2)
    dense = GPTConfig(n_layer=4, d_model=8, n_head=2, n_ctx=8, vocab_size=11)
    assert [every.is_moe_layer(i) for i in range(4)] == [True] * 4
    assert [other.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert dense.n_moe_layers == 0
    model = GPT(other)
    assert [isinstance(b.mlp, MoE) for b in model.blocks] == [False, True, False, True]
    idx = torch.randint(0, 11, (2, 8))
    _, loss = model(idx, idx)
    aux = model.auxiliary_loss()
    assert aux.ndim == 0 and aux.item() > 0
    assert GPT(dense).auxiliary_loss() == 0.0


@pytest.mark.parametrize("kwargs", [dict(n_experts=4, expert_k=5), dict(n_experts=4, expert_k=0),
                                    dict(n_experts=4, capacity_factor=0.0), dict(n_experts=4, capacity_factor=-1.0),
                                    dict(n_experts=-1), dict(n_experts=4, moe_every=0),
                                    dict(n_experts=4, routing="hash"), dict(n_experts=4, aux_loss_coef=-0.1)])
def test_gpt_config_rejects_bad_moe_options(kwargs):
    with pytest.raises(ValueError):
        GPTConfig(n_layer=2, d_model=8, n_head=2, n_ctx=8, vocab_size=11, **kwargs)


def test_memory_to_train_and_to_serve():
    from book.moe import serving_bytes, training_bytes

    parts = training_bytes(1000)
    assert sum(parts.values()) == 16_000 and parts["parameters"] == 2000  # bf16 weights
    assert serving_bytes(1000) == 2000 and serving_bytes(1000, 1) == 1000
    # Switch-C's 1,571B parameters in bf16: 3.1 TB, not the 20 GB a widely shared tutorial claims
    assert 3.1e12 < serving_bytes(1571e9) < 3.2e12
    for call in (lambda: training_bytes(True), lambda: serving_bytes(10, float("inf"))):
        with pytest.raises((TypeError, ValueError)):
            call()
