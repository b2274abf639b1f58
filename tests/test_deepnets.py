import math

import pytest
import torch
from torch.autograd.functional import jacobian

from book import deepnets
from book.data import dataset_from_text
from book.deepnets import (
    VARIANTS,
    DeepLayer,
    DeepStack,
    WindowLM,
    layer_grad_norms,
    stack_params,
    train_window_lm,
    weight_grad_norms,
    window_batch,
    window_loss,
)


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


def test_training_lowers_the_loss_and_is_deterministic(tiny_text):
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = WindowLM(tiny_text.vocab_size, 4, 16, 3, "pre_ln", d_embed=4)
        before = window_loss(model, tiny_text.train, n_windows=256)
        result = train_window_lm(model, tiny_text, steps=60, lr=3e-3, batch_size=32, eval_windows=256)
        losses.append(result["train_loss"])
    assert not result["diverged"] and result["train_loss"] < before - 0.5
    assert losses[0] == losses[1]
    assert result["curve"][0][0] == 0 and result["curve"][-1][0] == 59


def test_divergence_is_reported_not_raised(tiny_text):
    torch.manual_seed(0)
    model = WindowLM(tiny_text.vocab_size, 4, 8, 2, "residual", d_embed=4)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    result = train_window_lm(model, tiny_text, steps=5, lr=1e-3, batch_size=8)
    assert result["diverged"] and result["train_loss"] == math.inf


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
    (lambda: window_loss(WindowLM(10, 4, 8, 2), torch.arange(10), n_windows=0), "n_windows"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0, "lr": 1e-3}, "steps"),
    ({"steps": 2, "lr": 0.0}, "lr"),
    ({"steps": 2, "lr": float("nan")}, "lr"),
    ({"steps": 2, "lr": 1e-3, "batch_size": -1}, "batch_size"),
])
def test_bad_training_arguments_raise(tiny_text, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_window_lm(WindowLM(tiny_text.vocab_size, 4, 8, 2), tiny_text, **kwargs)


def test_training_needs_a_window_model(tiny_text):
    with pytest.raises(ValueError, match="WindowLM"):
        train_window_lm(DeepStack(2, 4), tiny_text, steps=1, lr=1e-3)


def test_variants_are_the_documented_ones():
    assert deepnets.VARIANTS == ("plain", "residual", "pre_ln", "post_ln")
