import math

import numpy as np
import pytest

from book import chinchilla, hardware

FIT = chinchilla.HOFFMANN_FIT


def test_parabola_finds_the_vertex():
    N = np.geomspace(1e3, 1e5, 6)
    x = np.log(N)
    p = chinchilla.fit_parabola(N, 0.1 * (x - np.log(5e3)) ** 2 + 2.0)
    assert p.N_opt == pytest.approx(5e3, rel=1e-9) and p.loss_opt == pytest.approx(2.0) and p.interior
    edge = chinchilla.fit_parabola(N, 0.1 * (x - np.log(1e6)) ** 2)
    assert not edge.interior
    with pytest.raises(ValueError, match="not convex"):
        chinchilla.fit_parabola(N, -(x**2))
    with pytest.raises(ValueError, match="3 distinct"):
        chinchilla.fit_parabola([1e3, 1e4, 1e4], [1.0, 2.0, 3.0])


def test_frontier_recovers_the_exponent_of_a_known_law():
    C, N = [], []
    for c in (1e18, 1e19, 1e20, 1e21):
        n_opt, _ = FIT.optimal(c)
        n = n_opt * np.geomspace(1 / 4, 4, 7)
        C += [c] * 7
        N += list(n)
    C, N = np.array(C), np.array(N)
    rng = np.random.default_rng(0)
    loss = FIT.predict(N, C / (6 * N)) + rng.normal(0, 1e-3, N.size)
    frontier = chinchilla.isoflop_frontier(C, N, loss, n_bootstrap=200)
    assert abs(frontier.a - FIT.a) < 0.02
    assert frontier.ci["a"][0] - 0.01 <= FIT.a <= frontier.ci["a"][1] + 0.01
    assert frontier.b == pytest.approx(1 - frontier.a)
    assert np.allclose(frontier.N_opt * frontier.D_opt * 6, frontier.C)
    assert np.allclose(frontier.N_opt, [FIT.optimal(c)[0] for c in frontier.C], rtol=0.1)
    n, d = frontier.optimal(1e19)
    assert 6 * n * d == pytest.approx(1e19)
    with pytest.raises(ValueError, match="2 budgets"):
        chinchilla.isoflop_frontier([1.0] * 3, [1.0, 2.0, 3.0], [1.0, 0.5, 1.0])


def test_published_fits():
    fit, source = chinchilla.PUBLISHED_FITS["Hoffmann et al. (2022)"]
    assert fit is FIT and "eq. (10)" in source
    assert FIT.a == pytest.approx(0.28 / 0.62)
    besiroglu = chinchilla.BESIROGLU_FIT
    assert 0.5 < besiroglu.a < 0.52  # compatible with Approaches 1 and 2, unlike the published 0.45


def test_allocate_by_flops_and_by_hours():
    by_flops = chinchilla.allocate(FIT, 5.76e23)
    assert 6 * by_flops.n_params * by_flops.n_tokens == pytest.approx(5.76e23)
    assert by_flops.loss == pytest.approx(FIT.predict(by_flops.n_params, by_flops.n_tokens))
    peak = hardware.accelerator("H100 SXM").peak("bfloat16")
    assert by_flops.accelerator_hours == pytest.approx(5.76e23 / (peak * hardware.PALM_540B_MFU) / 3600)
    by_hours = chinchilla.allocate(FIT, accelerator_hours=1000.0, accelerator="A100", mfu=0.4, n_accelerators=8)
    assert by_hours.flops == pytest.approx(1000 * 3600 * 312e12 * 0.4)
    assert by_hours.accelerator_hours == pytest.approx(1000.0) and by_hours.days == pytest.approx(1000 / 8 / 24)
    assert by_hours.tokens_per_param == pytest.approx(by_hours.n_tokens / by_hours.n_params)
    for kwargs, match in ((dict(), "exactly one"), (dict(flops=1e20, accelerator_hours=1.0), "exactly one"),
                          (dict(flops=-1.0), "flops"), (dict(flops=1e20, mfu=1.5), "mfu"),
                          (dict(flops=1e20, accelerator="TPU"), "not a known accelerator"),
                          (dict(flops=1e20, n_accelerators=0), "n_accelerators")):
        with pytest.raises((TypeError, ValueError), match=match):
            chinchilla.allocate(FIT, **kwargs)
    with pytest.raises(TypeError, match="ChinchillaFit"):
        chinchilla.allocate({"E": 1.69}, 1e20)


def test_tokens_for_loss_inverts_predict():
    assert chinchilla.tokens_for_loss(FIT, 7e10, FIT.predict(7e10, 1.4e12)) == pytest.approx(1.4e12, rel=1e-9)
    assert chinchilla.tokens_for_loss(FIT, 1e6, 2.0) == math.inf  # a 1M model never reaches 2.0
    assert chinchilla.tokens_for_loss(FIT, np.array([7e10, 1e6]), 2.0).shape == (2,)


def test_inference_aware_optimum():
    n_opt, d_opt = FIT.optimal(5.76e23)
    target = FIT.predict(n_opt, d_opt)
    plain = chinchilla.inference_aware_optimum(FIT, target, 0.0)
    assert plain.n_params == pytest.approx(n_opt, rel=1e-4) and plain.inference_flops == 0
    assert plain.train_flops == pytest.approx(5.76e23, rel=1e-6)
    served = chinchilla.inference_aware_optimum(FIT, target, 1e13)
    assert served.n_params < plain.n_params and served.n_tokens > plain.n_tokens
    assert FIT.predict(served.n_params, served.n_tokens) == pytest.approx(target, rel=1e-9)
    # cheaper in total than serving the compute-optimal model
    assert served.total_flops < plain.train_flops + 2 * plain.n_params * 1e13
    with pytest.raises(ValueError, match="loss must be above"):
        chinchilla.inference_aware_optimum(FIT, 1.5, 0.0)
    with pytest.raises(ValueError, match="inference_tokens"):
        chinchilla.inference_aware_optimum(FIT, 2.0, -1.0)


def _isoflop_points(budgets, spans, noise=0.0, seed=0):
    """Points from Hoffmann's own law: at each budget, 7 sizes over n_opt * span (a (low, high) factor)."""
    C, N = [], []
    for c, (low, high) in zip(budgets, spans):
        n = FIT.optimal(c)[0] * np.geomspace(low, high, 7)
        C += [c] * 7
        N += list(n)
    C, N = np.array(C), np.array(N)
    loss = FIT.predict(N, C / (6 * N)) + np.random.default_rng(seed).normal(0, noise, N.size)
    return C, N, loss


BUDGETS = (1e18, 1e19, 1e20, 1e21)


def test_frontier_drops_a_budget_whose_minimum_is_outside_its_sizes():
    # the last budget's sizes all lie above its optimum: its parabola's minimum is an extrapolation
    spans = [(1 / 4, 4)] * 3 + [(2, 30)]
    C, N, loss = _isoflop_points(BUDGETS, spans)
    with pytest.warns(UserWarning, match="budget C = 1e\\+21 left out"):
        dropped = chinchilla.isoflop_frontier(C, N, loss, n_bootstrap=0)
    assert dropped.excluded == (1e21,) and list(dropped.C) == list(BUDGETS[:3])
    assert abs(dropped.a - FIT.a) < 0.02
    kept = chinchilla.isoflop_frontier(C, N, loss, n_bootstrap=0, exterior="keep")
    assert kept.excluded == () and len(kept.C) == 4
    assert abs(kept.a - FIT.a) > 2 * abs(dropped.a - FIT.a)  # the extrapolated minimum pulls the exponent off
    C2, N2, loss2 = _isoflop_points(BUDGETS[:2], [(1 / 4, 4), (2, 30)])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="left out.*C = 1e\\+19"):
        chinchilla.isoflop_frontier(C2, N2, loss2, n_bootstrap=0)


def test_frontier_nearest_sizes_fix_wide_profiles():
    # one ladder of sizes over six decades at every budget: far from its minimum a profile is no parabola in
    # log N, and each budget's minimum sits elsewhere on the ladder; the 5 sizes nearest the best one are fine
    ladder = np.geomspace(1e6, 1e12, 19)
    C = np.repeat(BUDGETS, len(ladder))
    N = np.tile(ladder, len(BUDGETS))
    loss = FIT.predict(N, C / (6 * N))
    wide = chinchilla.isoflop_frontier(C, N, loss, n_bootstrap=0)
    near = chinchilla.isoflop_frontier(C, N, loss, n_bootstrap=0, nearest=5)
    assert abs(wide.a - FIT.a) > 0.02 and abs(near.a - FIT.a) < 0.002
    with pytest.raises(ValueError, match="nearest"):
        chinchilla.isoflop_frontier(C, N, loss, nearest=2)


def test_frontier_names_a_budget_with_too_few_sizes():
    C, N, loss = _isoflop_points(BUDGETS[:3], [(1 / 4, 4)] * 3)
    keep = ~((C == 1e19) & (N > FIT.optimal(1e19)[0] * 0.9))  # leave 1e19 with its 3 smallest... then 2
    keep &= ~((C == 1e19) & (N < FIT.optimal(1e19)[0] * 0.3))
    with pytest.raises(ValueError, match="budget C = 1e\\+19 has 2 distinct sizes.*train more sizes"):
        chinchilla.isoflop_frontier(C[keep], N[keep], loss[keep], n_bootstrap=0)


def test_unrounded_hoffmann_fit():
    un = chinchilla.HOFFMANN_FIT_UNROUNDED
    assert un.alpha == 0.33917084 and un.beta == 0.2849083
    assert math.log(un.A) == pytest.approx(6.0073404) and math.log(un.E) == pytest.approx(0.5267228)
    # both printed constants are the unrounded ones rounded; the compute-optimal N differs more than they do
    assert round(un.E, 2) == FIT.E and round(un.A, 1) == FIT.A and round(un.B, 1) == FIT.B
    assert 1.1 < un.optimal(5.76e23)[0] / FIT.optimal(5.76e23)[0] < 1.4


def test_schedule_gap():
    def result(steps, slope):
        curve = [{"step": 0, "tokens": 0, "val_loss": 3.0}]
        curve += [{"step": s, "tokens": 10 * s, "train_loss": 3.0 - slope * s} for s in range(1, steps + 1)]
        return {"model_config": {"d_model": 8}, "tokens": 10 * steps, "curve": curve}
    assert chinchilla.schedule_gap(result(10, 0.2), result(40, 0.1)) > 0
    with pytest.raises(ValueError, match="fewer tokens"):
        chinchilla.schedule_gap(result(40, 0.1), result(10, 0.2))


@pytest.mark.parametrize("call, match", [
    (lambda: chinchilla.isoflop_frontier([0.0, 0, 0, 1, 1, 1], [1, 2, 3, 1, 2, 3], [1, 0.5, 1] * 2), "C must be"),
    (lambda: chinchilla.isoflop_frontier([1.0], [1.0], [1.0], exterior="ignore"), "exterior"),
    (lambda: chinchilla.isoflop_frontier([1.0], [1.0], [np.nan]), "loss"),
    (lambda: chinchilla.fit_parabola([1, 2, -3], [1, 0, 1]), "N must be"),
    (lambda: chinchilla.allocate(FIT, 1e20, mfu=0), "mfu"),
    (lambda: chinchilla.allocate(FIT, float("inf")), "flops"),
    (lambda: chinchilla.allocate("fit", 1e20), "fit"),
    (lambda: chinchilla.tokens_for_loss(FIT, -1, 2.0), "N"),
    (lambda: chinchilla.inference_aware_optimum(FIT, 2.0, -1), "inference_tokens"),
    (lambda: chinchilla.schedule_gap([], {}), "short"),
])
def test_bad_input_raises(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
