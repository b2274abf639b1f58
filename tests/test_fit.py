import math

import numpy as np
import pytest

from book.fit import PowerLawFit, fit_power_law

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
    with pytest.raises(ValueError, match=match):
        fit_power_law(**args)

