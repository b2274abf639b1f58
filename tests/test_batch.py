"""book.batch: the noise-scale estimator and the steps-examples fit on cases with a known answer."""

import math

import numpy as np
import pytest
import torch

from book import batch


def test_noise_scale_recovers_a_known_signal_and_noise():
    # Per-example gradients g = G + noise with covariance sigma^2 I: tr(Sigma) = P sigma^2.
    gen = torch.Generator().manual_seed(0)
    P, sigma, b, k = 400, 0.5, 8, 4000
    G = torch.full((P,), 0.05)
    per_example = G + sigma * torch.randn(k * b, P, generator=gen)
    grads = per_example.view(k, b, P).mean(dim=1)
    est = batch.gradient_noise_scale(grads, b)
    truth = P * sigma**2 / G.pow(2).sum().item()
    assert est.big_batch == k * b
    assert math.isclose(est.trace_sigma, P * sigma**2, rel_tol=0.05)
    assert math.isclose(est.b_simple, truth, rel_tol=0.1)


def test_micro_batch_gradients_shape_and_mean():
    model = torch.nn.Linear(3, 2)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, y):
            return None, ((self.inner(x) - y) ** 2).mean()

    xs = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(3)]
    grads = batch.micro_batch_gradients(Wrapped(), xs)
    assert grads.shape == (3, 8)
    assert model.weight.grad is None


def test_fit_recovers_the_hyperbola_and_brackets_it():
    s_min, e_min = 120.0, 24_000.0  # B_crit = 200
    sizes = np.array([16, 32, 64, 128, 256, 512, 1024, 2048])
    steps = s_min * (1 + (e_min / s_min) / sizes)
    exact = batch.fit_steps_examples(steps, steps * sizes, n_bootstrap=0)
    assert math.isclose(exact.s_min, s_min, rel_tol=1e-6) and math.isclose(exact.e_min, e_min, rel_tol=1e-6)
    assert math.isclose(exact.b_crit, 200, rel_tol=1e-6)
    noisy = steps * np.exp(np.random.default_rng(0).normal(0, 0.03, len(sizes)))
    fit = batch.fit_steps_examples(noisy, noisy * sizes, n_bootstrap=100, seed=1)
    low, high = fit.ci["b_crit"]
    assert low < 200 < high
    assert np.allclose(exact.steps(sizes), steps) and np.allclose(exact.examples(sizes), steps * sizes)


@pytest.mark.parametrize("call,name", [
    (lambda: batch.gradient_noise_scale(torch.zeros(1, 5), 4), "grads"),
    (lambda: batch.gradient_noise_scale(torch.full((2, 3), float("nan")), 4), "grads"),
    (lambda: batch.gradient_noise_scale(torch.ones(2, 3), 0), "batch_size"),
    (lambda: batch.gradient_noise_scale([[1.0]], 1), "grads"),
    (lambda: batch.fit_steps_examples([1, 2], [3, 4]), "steps"),
    (lambda: batch.fit_steps_examples([1, 2, -3], [3, 4, 5]), "steps"),
    (lambda: batch.fit_steps_examples([1, 2, 3], [3, 4, 5], n_bootstrap=-1), "n_bootstrap"),
])
def test_bad_input(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_steps_to_target_interpolates_the_smoothed_crossing():
    steps = np.arange(10, 110, 10)
    losses = 4.0 - 0.02 * steps  # straight: smoothing leaves it unchanged; 2.5 is reached at step 75
    assert math.isclose(batch.steps_to_target(steps, losses, 2.5, window=3), 75.0)
    assert math.isnan(batch.steps_to_target(steps, losses, 1.0))
    bumpy = losses.copy()
    bumpy[2] = 2.0  # one lucky batch at step 30 is averaged away
    assert batch.steps_to_target(steps, bumpy, 2.5, window=3) > 30
    with pytest.raises(ValueError, match="window"):
        batch.steps_to_target(steps, losses, 2.5, window=2)
