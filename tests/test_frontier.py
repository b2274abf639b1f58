import numpy as np
import pytest

from book import frontier
from book.fit import fit_exponent


def result(params, points):
    """A sweep result with a curve of (tokens, train_loss, val_loss) points after step 0."""
    curve = [{"step": 0, "tokens": 0, "val_loss": 5.0}]
    for i, (tokens, train, val) in enumerate(points, 1):
        curve.append({"step": i, "tokens": tokens, "train_loss": train} | ({} if val is None else {"val_loss": val}))
    return {"run": f"n{params}", "params": params, "curve": curve}


def test_token_and_compute_curves():
    r = result(100, [(80, 0.9, None), (160, 0.8, 0.7), (320, 0.6, 0.65)])
    tokens, loss = frontier.token_curve(r, "train_loss")
    assert tokens.tolist() == [40, 120, 240] and loss.tolist() == [0.9, 0.8, 0.6]  # window midpoints
    tokens, loss = frontier.token_curve(r, "val_loss")
    assert tokens.tolist() == [160, 320] and loss.tolist() == [0.7, 0.65]  # step 0 left out
    C, loss = frontier.compute_curve(r, "val_loss")
    assert C.tolist() == [6 * 100 * 160, 6 * 100 * 320]  # C = 6 N D
    with pytest.raises(ValueError, match="loss must be one of"):
        frontier.compute_curve(r, "test_loss")
    with pytest.raises(ValueError, match="no val_loss"):
        frontier.token_curve(result(100, [(80, 0.9, None)]), "val_loss")


def test_envelope_and_optimal_sizes():
    # L = 2 + 5 (N/1e3)^-0.3 + 5 (S/1e3)^-0.5 at S = C / 6N steps: bigger models are worse early, better late
    sizes = np.array([1e3, 3e3, 1e4, 3e4, 1e5])
    curves = []
    for n in sizes:
        steps = np.geomspace(10, 1e6, 40)
        curves.append((6 * n * steps, 2 + 5 * (n / 1e3) ** -0.3 + 5 * (steps / 1e3) ** -0.5))
    budgets = np.geomspace(1e8, 1e12, 9)
    loss, best = frontier.lower_envelope(curves, budgets)
    assert np.all(np.diff(loss[:-1]) < 0) and np.all(np.diff(best) >= 0)
    # past every curve's end the frontier keeps its last value: a run can stop early, never go further
    assert loss[-1] == loss[-2] and best[-1] == best[-2]
    early, first = frontier.lower_envelope(curves, np.array([1.0, 1e8]))
    assert np.isnan(early[0]) and first[0] == -1 and first[1] >= 0
    with pytest.raises(ValueError, match="increasing"):
        frontier.lower_envelope(curves, budgets[::-1])
    n_opt = frontier.optimal_sizes(curves, sizes, budgets)
    ok = ~np.isnan(n_opt)
    assert ok.sum() >= 3 and np.all(np.diff(n_opt[ok]) > 0)
    exponent = fit_exponent(budgets[ok], n_opt[ok], n_bootstrap=100, seed=0)
    assert 0 < exponent.exponent < 1 and exponent.ci[0] <= exponent.exponent <= exponent.ci[1]
    with pytest.raises(ValueError, match="same length"):
        frontier.optimal_sizes(curves, sizes[:2], budgets)


def test_envelope_of_results():
    small = result(10, [(t, 3 - 0.1 * np.log(t), None) for t in (100, 1000, 10000)])
    big = result(100, [(t, 3.5 - 0.2 * np.log(t), None) for t in (100, 1000, 10000)])
    env = frontier.envelope([small, big], n_grid=50, start_fraction=0.0)
    assert env.C[0] == pytest.approx(6 * 10 * 50) and env.C[-1] == pytest.approx(6 * 100 * 5500)
    assert np.all(np.diff(env.loss) <= 0)  # never rises
    assert env.N[0] == 10 and env.N[-1] == 100
    with pytest.raises(ValueError, match="start_fraction"):
        frontier.envelope([small], start_fraction=1.0)
    with pytest.raises(ValueError, match="results"):
        frontier.envelope([])


@pytest.mark.parametrize("call, match", [
    (lambda: frontier.lower_envelope([], [1.0]), "curves"),
    (lambda: frontier.lower_envelope([([1.0, 2.0], [1.0, 0.5])], [0.0, 1.0]), "budgets"),
    (lambda: frontier.optimal_sizes([([1.0, 2.0], [1.0, 0.5])], [-1.0], [1.0]), "sizes"),
    (lambda: frontier.token_curve([], "train_loss"), "result"),
    (lambda: frontier.envelope([result(1, [(8, 1.0, None)])], n_grid=0), "n_grid"),
])
def test_bad_input_raises(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
