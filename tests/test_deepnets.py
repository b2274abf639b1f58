import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from book import deepnets, hardware
from book.data import dataset_from_text
from book.deepnets import (
    VARIANTS,
    DeepLayer,
    DeepStack,
    WindowLM,
    layer_grad_norms,
    stack_params,
    weight_grad_norms,
    window_batch,
)
from book.experiments.ch01_why_scale import residual_paths_config
from book.train import evaluate, train


def zero_branches(stack):
    with torch.no_grad():
        for layer in stack.layers:
            layer.down.weight.zero_()
            layer.down.bias.zero_()
    return stack


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_parameter_counts(variant):
    stack = DeepStack(7, 12, variant)
    assert sum(p.numel() for p in stack.parameters()) == stack_params(7, 12, variant)
    x = torch.randn(3, 5, 12)
    out, hidden = stack(x, return_hidden=True)
    assert out.shape == x.shape and len(hidden) == 8 and hidden[0] is x and hidden[-1] is out
    model = WindowLM(vocab_size=11, context=4, width=12, n_layer=7, variant=variant, d_embed=3)
    logits, loss = model(torch.randint(0, 11, (6, 4)), torch.randint(0, 11, (6,)))
    assert logits.shape == (6, 11) and loss.ndim == 0
    own = sum(p.numel() for p in model.parameters()) - stack_params(7, 12, variant)
    assert own == 11 * 3 + (4 * 3 * 12 + 12) + (12 * 11 + 11)  # embedding, input projection, read-out


def test_parameter_count_formula():
    assert stack_params(50, 64, "plain") == 50 * 2 * (64 * 64 + 64)
    assert stack_params(50, 64, "pre_ln") - stack_params(50, 64, "residual") == 50 * 2 * 64


@pytest.mark.parametrize("variant", ["residual", "pre_ln"])
def test_residual_stack_with_zero_branches_is_the_identity(variant):
    stack = zero_branches(DeepStack(6, 5, variant).double())
    x = torch.randn(5, dtype=torch.float64)
    assert torch.equal(stack(x), x)
    assert torch.equal(jacobian(stack, x), torch.eye(5, dtype=torch.float64))


def test_post_ln_with_zero_branches_still_normalizes():
    stack = zero_branches(DeepStack(1, 6, "post_ln").double())
    x = torch.arange(6, dtype=torch.float64) * 3 + 1
    out = stack(x)
    assert abs(out.mean().item()) < 1e-12 and out.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)


def test_residual_jacobian_is_identity_plus_branch_jacobian():
    torch.manual_seed(0)
    layer = DeepLayer(6, "residual").double()
    x = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(jacobian(layer, x), torch.eye(6, dtype=torch.float64) + jacobian(layer.branch, x))


def test_grad_norms_match_a_hand_computation_on_two_layers():
    torch.manual_seed(0)
    stack = DeepStack(2, 4, "plain").double()
    x = torch.randn(3, 4, dtype=torch.float64)
    _, (x0, x1, x2) = stack(x, return_hidden=True)
    g2 = 2 * x2  # d/dx2 of sum |x2|^2

    def back(layer, x_in, g):  # x_out = W2 relu(W1 x + b1) + b2, so g_in = W1^T diag(relu') W2^T g
        return ((g @ layer.down.weight) * (layer.up(x_in) > 0)) @ layer.up.weight

    g1 = back(stack.layers[1], x1, g2)
    g0 = back(stack.layers[0], x0, g1)
    norms = layer_grad_norms(stack, x, lambda out: out.pow(2).sum())
    assert torch.allclose(norms, torch.stack([g0.norm(), g1.norm(), g2.norm()]))
    assert all(p.grad is None for p in stack.parameters())  # measured without touching .grad


def test_grad_norms_of_a_residual_stack_add_the_identity_path():
    torch.manual_seed(0)
    stack = zero_branches(DeepStack(3, 4, "residual").double())
    x = torch.randn(2, 4, dtype=torch.float64)
    norms = layer_grad_norms(stack, x, lambda out: out.sum())
    assert torch.allclose(norms, torch.full((4,), math.sqrt(8), dtype=torch.float64))  # all ones, 2 x 4


def test_plain_gradient_vanishes_at_the_predicted_rate():
    torch.manual_seed(0)
    x, r = torch.randn(2, 128, 64, dtype=torch.float64)
    norms = layer_grad_norms(DeepStack(30, 64, "plain").double(), x, lambda out: (out * r).sum())
    per_layer = (norms[:-1] / norms[1:]).log().mean().exp().item()
    assert per_layer == pytest.approx((1 / 18) ** 0.5, rel=0.15)


def test_kaiming_init_keeps_the_plain_gradient_level():
    torch.manual_seed(0)
    x, r = torch.randn(2, 128, 64, dtype=torch.float64)
    stack = DeepStack(30, 64, "plain", init="kaiming").double()
    assert all(torch.all(layer.up.bias == 0) for layer in stack.layers)
    norms = layer_grad_norms(stack, x, lambda out: (out * r).sum())
    assert (norms[:-1] / norms[1:]).log().mean().exp().item() == pytest.approx(1.0, rel=0.15)


def test_weight_grad_norms_read_each_layers_first_matrix():
    torch.manual_seed(0)
    stack = DeepStack(3, 4, "pre_ln")
    stack(torch.randn(5, 4)).sum().backward()
    assert torch.equal(weight_grad_norms(stack), torch.stack([layer.up.weight.grad.norm() for layer in stack.layers]))


def test_window_batch_targets_follow_the_window():
    tokens = torch.arange(100)
    x, y = window_batch(tokens, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 5) and y.shape == (8,)
    assert torch.equal(y, x[:, -1] + 1)


@pytest.fixture(scope="module")
def tiny_text():
    return dataset_from_text("to be or not to be, that is the question. " * 40)


@pytest.fixture
def fake_peak(monkeypatch):
    monkeypatch.setattr(hardware, "measured_peak", lambda dtype=None, dev=None: 1e11)


def test_window_lm_trains_through_the_one_loop(tiny_text, fake_peak):
    losses = []
    cfg = residual_paths_config(3e-3, steps=60, batch_size=32)
    for _ in range(2):
        torch.manual_seed(0)
        model = WindowLM(tiny_text.vocab_size, 4, 16, 3, "pre_ln", d_embed=4)
        before = evaluate(model, tiny_text.train, batch_size=64, n_batches=4)
        result = train(model, cfg, tiny_text, dev=torch.device("cpu"), progress=False)
        assert result.model is model  # trained in place
        losses.append(evaluate(model, tiny_text.train, batch_size=64, n_batches=4))
    assert losses[0] == losses[1] and losses[0] < before - 0.5
    assert result.params == sum(p.numel() for p in model.parameters()) and result.model_config["n_ctx"] == 4
    assert all(point["lr"] == 3e-3 for point in result.curve[1:])  # a constant rate, no warmup


def test_evaluate_scores_the_window_model_on_fixed_windows(tiny_text):
    torch.manual_seed(0)
    model = WindowLM(tiny_text.vocab_size, 4, 8, 2, "residual", d_embed=4)
    x, y = window_batch(tiny_text.val, 4, 48, torch.Generator().manual_seed(1234))  # evaluate's windows
    by_hand = F.cross_entropy(model(x)[0], y).item()
    assert evaluate(model, tiny_text.val, batch_size=16, n_batches=3) == pytest.approx(by_hand, rel=1e-6)
    full = torch.roll(x, -1, 1)  # the window shifted by one, as get_batch gives targets
    full[:, -1] = y
    assert torch.equal(model(x, full)[1], model(x, y)[1])  # (B, context) targets: the last column counts


def test_divergence_raises(tiny_text, fake_peak):
    torch.manual_seed(0)
    model = WindowLM(tiny_text.vocab_size, 4, 8, 2, "residual", d_embed=4)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        train(model, residual_paths_config(1e-3, steps=5, batch_size=8), tiny_text, dev=torch.device("cpu"),
              progress=False)


@pytest.mark.parametrize("call, match", [
    (lambda: DeepStack(0, 4), "n_layer"),
    (lambda: DeepStack(2, 4.0), "width"),
    (lambda: DeepStack(2, 4, "dense"), "variant"),
    (lambda: DeepStack(2, 4, init="xavier"), "init"),
    (lambda: DeepLayer(4, "pre-ln"), "variant"),
    (lambda: stack_params(2, True, "plain"), "width"),
    (lambda: DeepStack(2, 4)(torch.randn(3, 5)), "width=4"),
    (lambda: layer_grad_norms(torch.nn.Linear(2, 2), torch.randn(2), lambda o: o.sum()), "DeepStack"),
    (lambda: layer_grad_norms(DeepStack(1, 2), torch.randn(3, 2), "sum"), "loss_fn"),
    (lambda: layer_grad_norms(DeepStack(1, 2), torch.randn(3, 2), lambda o: o), "scalar"),
    (lambda: weight_grad_norms(DeepStack(1, 2)), "backward"),
    (lambda: WindowLM(0, 4, 8, 2), "vocab_size"),
    (lambda: WindowLM(10, 4, 8, 2).features(torch.zeros(2, 3, dtype=torch.long)), "context=4"),
    (lambda: WindowLM(10, True, 8, 2), "context"),
])
def test_bad_input_raises(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_variants_are_the_documented_ones():
    assert deepnets.VARIANTS == ("plain", "residual", "pre_ln", "post_ln")


def test_a_built_gpt_trains_as_its_config_does(tiny_text, fake_peak):
    from book.model import GPT, GPTConfig
    from book.train import TrainConfig

    cfg = GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=8, vocab_size=tiny_text.vocab_size)
    schedule = TrainConfig(steps=4, batch_size=4, eval_every=2, eval_batches=1)
    by_config = train(cfg, schedule, tiny_text, dev=torch.device("cpu"), progress=False)
    torch.manual_seed(schedule.seed)  # train() seeds, then builds GPT(cfg): the same initial weights
    by_model = train(GPT(cfg), schedule, tiny_text, dev=torch.device("cpu"), progress=False)
    assert by_model.curve == by_config.curve and by_model.params == by_config.params
    with pytest.raises(TypeError, match="model_config"):
        train("gpt", schedule, tiny_text, progress=False)
