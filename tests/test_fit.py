import math

import numpy as np
import pytest

from book.fit import ChinchillaFit, PowerLawFit, _batched_lbfgs, fit_chinchilla, fit_power_law, hoffmann_grid

E_TRUE, A_TRUE, ALPHA_TRUE = 1.7, 400.0, 0.3
X = np.logspace(4, 8, 12)


def noisy_losses(seed=0, sigma=0.005):
    """L = E + A x^-alpha times log-normal noise of about sigma (0.5%) per point."""
    rng = np.random.default_rng(seed)
    return (E_TRUE + A_TRUE * X**-ALPHA_TRUE) * np.exp(rng.normal(0.0, sigma, X.size))


@pytest.fixture(scope="module")
def noisy_fit():
    return fit_power_law(X, noisy_losses())


def test_recovers_known_parameters_from_noisy_data(noisy_fit):
    fit = noisy_fit
    assert isinstance(fit, PowerLawFit) and fit.irreducible and fit.n_points == X.size
    assert abs(fit.alpha - ALPHA_TRUE) < 0.03
    assert abs(fit.E / E_TRUE - 1) < 0.03
    assert abs(fit.A / A_TRUE - 1) < 0.15
    assert fit.loss >= 0


def test_bootstrap_intervals_cover_truth_and_estimate(noisy_fit):
    fit = noisy_fit
    assert set(fit.ci) == {"E", "A", "alpha"}
    for name, truth in (("E", E_TRUE), ("A", A_TRUE), ("alpha", ALPHA_TRUE)):
        low, high = fit.ci[name]
        estimate = getattr(fit, name)
        assert low < high
        assert low <= estimate <= high, f"{name}={estimate} outside its own interval {fit.ci[name]}"
        # "inside or near": widen by 10% of the interval's width for the odd unlucky draw
        slack = 0.1 * (high - low)
        assert low - slack <= truth <= high + slack, f"true {name}={truth} far from {fit.ci[name]}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovery_holds_across_noise_draws(seed):
    fit = fit_power_law(X, noisy_losses(seed), n_bootstrap=0)
    assert abs(fit.alpha - ALPHA_TRUE) < 0.03
    assert abs(fit.E / E_TRUE - 1) < 0.05


def test_pure_power_law_is_exact_on_noiseless_data():
    y = A_TRUE * X**-ALPHA_TRUE
    fit = fit_power_law(X, y, irreducible=False)
    assert fit.E == 0.0 and not fit.irreducible
    assert fit.A == pytest.approx(A_TRUE, rel=1e-6)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, abs=1e-8)
    assert fit.ci["alpha"][0] == pytest.approx(ALPHA_TRUE, abs=1e-6)
    assert fit.ci["alpha"][1] == pytest.approx(ALPHA_TRUE, abs=1e-6)
    assert fit.ci["E"] == (0.0, 0.0)


def test_irreducible_fit_is_exact_on_noiseless_data_over_wide_range():
    # x from 1e3 to 1e12: the internal normalisation keeps A well-conditioned
    x = np.logspace(3, 12, 10)
    fit = fit_power_law(x, 1.69 + 406.4 * x**-0.34, n_bootstrap=0)
    assert fit.E == pytest.approx(1.69, rel=1e-4)
    assert fit.A == pytest.approx(406.4, rel=1e-3)
    assert fit.alpha == pytest.approx(0.34, abs=1e-4)


def test_predict_round_trips(noisy_fit):
    fit = noisy_fit
    y = fit.predict(X)
    assert isinstance(y, np.ndarray) and y.shape == X.shape
    assert np.allclose(y, fit.E + fit.A * X**-fit.alpha)
    scalar = fit.predict(1e6)
    assert isinstance(scalar, float) and scalar == pytest.approx(fit.E + fit.A * 1e6**-fit.alpha)
    # a fit to its own predictions gives itself back
    refit = fit_power_law(X, y, n_bootstrap=0)
    assert refit.predict(X) == pytest.approx(y, rel=1e-6)
    with pytest.raises(ValueError, match="x"):
        fit.predict([1.0, 0.0])


def test_str_and_as_dict(noisy_fit):
    assert str(PowerLawFit(E=1.23, A=45.6, alpha=0.076, irreducible=True)) == "L(x) = 1.23 + 4.56e+01 · x^(-0.076)"
    assert str(PowerLawFit(E=0.0, A=45.6, alpha=0.076, irreducible=False)) == "L(x) = 4.56e+01 · x^(-0.076)"
    assert repr(noisy_fit) == f"PowerLawFit({noisy_fit}, n_points=12)"
    d = noisy_fit.as_dict()
    assert d["alpha"] == noisy_fit.alpha and d["ci"]["E"] == list(noisy_fit.ci["E"])


def test_deterministic(noisy_fit):
    again = fit_power_law(X, noisy_losses())
    assert again.as_dict() == noisy_fit.as_dict()
    other_seed = fit_power_law(X, noisy_losses(), n_bootstrap=20, seed=1)
    assert other_seed.alpha == noisy_fit.alpha  # the point estimate does not depend on the seed


def test_no_bootstrap_gives_nan_intervals():
    fit = fit_power_law(X, noisy_losses(), n_bootstrap=0)
    assert all(math.isnan(v) for interval in fit.ci.values() for v in interval)


def test_degenerate_resamples_are_skipped():
    # 4 distinct x for 3 parameters: many resamples have too few distinct x; the fit still finishes
    x = np.array([1e4, 1e5, 1e6, 1e7])
    fit = fit_power_law(x, E_TRUE + A_TRUE * x**-ALPHA_TRUE, n_bootstrap=50)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, abs=1e-3)
    assert all(np.isfinite(fit.ci["alpha"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=[1, 2, 0, 4, 5], y=[5, 4, 3, 2, 1]), "x must be positive"),
        (dict(x=[1, 2, 3, 4, 5], y=[5, 4, -3, 2, 1]), "y must be positive"),
        (dict(x=[1, 2, np.nan, 4, 5], y=[5, 4, 3, 2, 1]), "x must be finite"),
        (dict(x=[1, 2, 3, 4, 5], y=[5, 4, np.inf, 2, 1]), "y must be finite"),
        (dict(x=[1, 2, 3, 4, 5], y=[5, 4, 3, 2]), "x and y must have the same length"),
        (dict(x=[[1, 2], [3, 4], [5, 6]], y=[5, 4, 3]), "x must be 1-D"),
        (dict(x=[1, 2, 3, 4, 5], y=[[5, 4, 3, 2, 1]]), "y must be 1-D"),
        (dict(x=["a", "b", "c", "d"], y=[4, 3, 2, 1]), "x must be"),
        (dict(x=[1, 2, 3], y=[3, 2, 1]), "x needs more than 3 distinct"),
        (dict(x=[1, 2, 3, 3, 3], y=[5, 4, 3, 3, 3]), "x needs more than 3 distinct"),
        (dict(x=[1, 2, 2], y=[3, 2, 2], irreducible=False), "x needs more than 2 distinct"),
        (dict(irreducible="yes"), "irreducible"),
        (dict(n_bootstrap=-1), "n_bootstrap"),
        (dict(n_bootstrap=2.5), "n_bootstrap"),
        (dict(delta=0.0), "delta"),
        (dict(delta=-1e-3), "delta"),
        (dict(delta=np.nan), "delta"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(x=[1e4, 1e5, 1e6, 1e7, 1e8], y=[3.0, 2.5, 2.2, 2.0, 1.9], n_bootstrap=0) | kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        fit_power_law(**args)



# --------------------------------------------------------------------------- fit_chinchilla

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. (2022), eq. 10


def chinchilla_points(n=250, sigma=0.01, seed=0):
    """Runs spread over Chinchilla's range, with log-normal noise of about sigma (1%) on the loss."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    L = TRUE["E"] + TRUE["A"] * N ** -TRUE["alpha"] + TRUE["B"] * D ** -TRUE["beta"]
    return N, D, L * np.exp(rng.normal(0.0, sigma, n))


@pytest.fixture(scope="module")
def chinchilla_fit():
    return fit_chinchilla(*chinchilla_points(), n_bootstrap=100)  # the full grid of 4,500 starts


def test_grid_is_hoffmanns():
    grid = hoffmann_grid()
    assert grid.shape == (4500, 5)
    assert sorted(set(grid[:, 0])) == [0, 5, 10, 15, 20, 25] and sorted(set(grid[:, 3])) == [0, 0.5, 1, 1.5, 2]
    assert sorted(set(grid[:, 2])) == [-1, -0.5, 0, 0.5, 1]


def test_chinchilla_recovers_known_parameters_within_intervals(chinchilla_fit):
    fit = chinchilla_fit
    assert isinstance(fit, ChinchillaFit) and fit.n_points == 250 and fit.n_starts == 4500
    for name, truth in TRUE.items():
        low, high = fit.ci[name]
        estimate = getattr(fit, name)
        assert low < high and low <= estimate <= high, f"{name}={estimate} outside its interval {fit.ci[name]}"
        slack = 0.1 * (high - low)
        assert low - slack <= truth <= high + slack, f"true {name}={truth} outside {fit.ci[name]}"
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.ci["a"][0] - 0.01 <= a_true <= fit.ci["a"][1] + 0.01
    assert abs(fit.a + fit.b - 1) < 1e-12
    assert abs(fit.alpha - TRUE["alpha"]) < 0.05 and abs(fit.beta - TRUE["beta"]) < 0.05
    assert fit.intervals is fit.ci


def test_chinchilla_exact_on_noiseless_data():
    N, D, _ = chinchilla_points(n=60)
    L = TRUE["E"] + TRUE["A"] * N ** -TRUE["alpha"] + TRUE["B"] * D ** -TRUE["beta"]
    fit = fit_chinchilla(N, D, L, n_bootstrap=0)
    for name, truth in TRUE.items():
        assert getattr(fit, name) == pytest.approx(truth, rel=2e-3), name
    assert fit.loss < 1e-9
    assert all(math.isnan(v) for interval in fit.ci.values() for v in interval)


def test_optimal_is_the_minimum_on_the_isoflop(chinchilla_fit):
    fit = chinchilla_fit
    for C in (1e20, 5.76e23, 1e26):
        n_opt, d_opt = fit.optimal(C)
        assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-12)
        ns = n_opt * np.exp(np.linspace(-1, 1, 2001))
        brute = ns[np.argmin(fit.predict(ns, C / (6 * ns)))]
        assert brute == pytest.approx(n_opt, rel=2e-3)
    n_arr, d_arr = fit.optimal(np.array([1e20, 1e22]))
    assert n_arr.shape == (2,) and n_arr[1] / n_arr[0] == pytest.approx(100 ** fit.a)
    assert fit.G == pytest.approx((fit.alpha * fit.A / (fit.beta * fit.B)) ** (1 / (fit.alpha + fit.beta)))


def test_chinchilla_predict_and_as_dict(chinchilla_fit):
    fit = chinchilla_fit
    assert isinstance(fit.predict(1e9, 2e10), float)
    assert fit.predict(1e9, 2e10) == pytest.approx(fit.E + fit.A * 1e9**-fit.alpha + fit.B * 2e10**-fit.beta)
    assert fit.predict(np.array([1e9, 1e10]), 1e11).shape == (2,)
    with pytest.raises(ValueError, match="N and D must be positive"):
        fit.predict(0.0, 1e9)
    with pytest.raises(ValueError, match="C must be positive"):
        fit.optimal(-1.0)
    d = fit.as_dict()
    assert d["alpha"] == fit.alpha and d["ci"]["beta"] == list(fit.ci["beta"])
    assert repr(fit).startswith("ChinchillaFit(L(N, D) = ")


def test_chinchilla_deterministic_and_custom_starts():
    N, D, L = chinchilla_points(n=40, seed=3)
    starts = hoffmann_grid()[::50]
    one = fit_chinchilla(N, D, L, starts=starts, n_bootstrap=10, seed=1)
    two = fit_chinchilla(N, D, L, starts=starts, n_bootstrap=10, seed=1)
    assert one.as_dict() == two.as_dict() and one.n_starts == len(starts)


def test_batched_lbfgs_matches_scipy_on_quadratics():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(7, 3))
    scales = np.exp(rng.normal(size=(7, 3)))

    def fun(x, rows):
        r = x - centres[rows]
        return (scales[rows] * r**2).sum(1), 2 * scales[rows] * r

    x, f, _ = _batched_lbfgs(fun, np.zeros((7, 3)))
    assert np.allclose(x, centres, atol=1e-5) and np.all(f < 1e-9)


def test_chinchilla_full_grid_is_fast_enough():
    # The timing itself is recorded in BENCHMARKS.md by lesson 3.3; here only a generous bound.
    import time

    N, D, L = chinchilla_points()
    start = time.perf_counter()
    fit_chinchilla(N, D, L, n_bootstrap=0)
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(N=[1e6, -1, 1e8, 1e9, 1e6, 1e7]), "N must be positive"),
        (dict(D=[1e9] * 5 + [np.nan]), "D must be finite"),
        (dict(loss=[3, 2.5, 2.2, 2.0, 1.9, 0]), "loss must be positive"),
        (dict(loss=[3, 2.5, 2.2]), "same length"),
        (dict(N=[1e6] * 3, D=[1e9] * 3, loss=[3.0] * 3), "at least 6 runs"),
        (dict(N=[1e6] * 6), "at least 2 distinct"),
        (dict(n_bootstrap=-1), "n_bootstrap"),
        (dict(bootstrap_starts=0), "bootstrap_starts"),
        (dict(delta=0.0), "delta"),
        (dict(seed=1.5), "seed"),
        (dict(starts=[[1, 2, 3]]), "starts must be"),
        (dict(starts="grid"), "starts must be"),
    ],
)
def test_chinchilla_bad_input_raises(kwargs, match):
    args = dict(N=[1e6, 1e7, 1e8, 1e6, 1e7, 1e8], D=[1e9, 1e9, 1e9, 1e10, 1e10, 1e10],
                loss=[3.0, 2.6, 2.4, 2.8, 2.3, 2.1], n_bootstrap=0) | kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        fit_chinchilla(**args)


# --------------------------------------------------------------------------- the bootstrap and fit_exponent


def test_bootstrap_indices_are_seeded_and_sized_by_the_caller():
    from book.fit import bootstrap_indices

    one = list(bootstrap_indices(5, n_bootstrap=3, seed=7))
    assert len(one) == 3 and all(idx.shape == (5,) and idx.min() >= 0 and idx.max() < 5 for idx in one)
    assert all(np.array_equal(a, b) for a, b in zip(one, bootstrap_indices(5, n_bootstrap=3, seed=7)))
    assert not all(np.array_equal(a, b) for a, b in zip(one, bootstrap_indices(5, n_bootstrap=3, seed=8)))
    assert list(bootstrap_indices(5, n_bootstrap=0, seed=0)) == []
    with pytest.raises(TypeError, match="n_bootstrap"):
        list(bootstrap_indices(5, n_bootstrap=2.0, seed=0))


def test_bootstrap_intervals():
    from book.fit import bootstrap_intervals

    samples = np.column_stack([np.arange(101.0), np.r_[np.arange(100.0), np.inf]])
    ci = bootstrap_intervals(samples, ["a", "b"])
    assert ci["a"] == pytest.approx((2.5, 97.5)) and np.isfinite(ci["b"][1])  # inf left out
    empty = bootstrap_intervals([], ["a"])
    assert np.isnan(empty["a"][0]) and np.isnan(empty["a"][1])
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(samples, ["a", "b"], level=1.0)


def test_fit_exponent_recovers_a_power_law():
    from book.fit import fit_exponent

    x = np.geomspace(1, 1e4, 9)
    y = 3.0 * x**0.7 * np.exp(np.random.default_rng(0).normal(0, 0.01, x.size))
    fit = fit_exponent(x, y, n_bootstrap=200, seed=0)
    assert fit.exponent == pytest.approx(0.7, abs=0.01) and fit.coefficient == pytest.approx(3.0, rel=0.05)
    assert fit.ci[0] <= fit.exponent <= fit.ci[1] and fit.ci[1] - fit.ci[0] < 0.02
    assert fit == fit_exponent(x, y, n_bootstrap=200, seed=0)
    assert fit.predict(10.0) == pytest.approx(fit.coefficient * 10**fit.exponent)
    with pytest.raises(TypeError):
        fit_exponent(x, y)  # the caller sizes and seeds the bootstrap
    with pytest.raises(ValueError, match="3 distinct"):
        fit_exponent([1, 1, 2], [1, 2, 3], n_bootstrap=0, seed=0)
