import matplotlib

matplotlib.use("Agg")  # headless: no display in tests or CI

import matplotlib.pyplot as plt
import numpy as np
import pytest

from book.fit import PowerLawFit
from book.plot import loglog_axes, new_figure, plot_power_law, size_colors, use_style

FIT = PowerLawFit(E=1.7, A=400.0, alpha=0.3, irreducible=True)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_use_style_sets_rcparams():
    use_style()
    assert matplotlib.rcParams["figure.dpi"] == 100
    assert matplotlib.rcParams["savefig.bbox"] == "tight"
    assert not matplotlib.rcParams["axes.spines.top"] and not matplotlib.rcParams["axes.spines.right"]
    assert matplotlib.get_backend().lower() == "agg"  # the style never switches backend


def test_size_colors_ordered_and_deterministic():
    sizes = [8_000_000, 1_000_000, 64_000_000, 2_000_000]
    colors = size_colors(sizes)
    assert list(colors) == sorted(sizes)  # small -> large
    assert len(set(colors.values())) == len(sizes)  # one colour each
    assert colors == size_colors(list(reversed(sizes)))  # order of the input does not matter
    # viridis runs dark -> light: small models dark, large models light
    lightness = [np.mean(matplotlib.colors.to_rgb(c)) for c in colors.values()]
    assert lightness == sorted(lightness)
    assert size_colors([]) == {}
    assert len(size_colors([5, 5, 5])) == 1


def test_new_figure_and_loglog_axes():
    fig, ax = new_figure()
    assert loglog_axes(ax, xlabel="tokens", ylabel="loss") is ax
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_xlabel() == "tokens"
    fig, axes = new_figure(ncols=3)
    assert axes.shape == (3,)
    with pytest.raises(ValueError, match="ncols"):
        new_figure(ncols=0)


def test_plot_power_law_draws_the_fit():
    fig, ax = new_figure()
    loglog_axes(ax)
    line = plot_power_law(ax, FIT, (1e4, 1e8), asymptote=True, color="C1")
    assert line in ax.get_lines()
    xs, ys = line.get_data()
    assert xs[0] == pytest.approx(1e4) and xs[-1] == pytest.approx(1e8)
    assert np.allclose(ys, FIT.predict(xs))
    assert line.get_label() == str(FIT)
    assert len(ax.get_lines()) == 2  # the curve and the dotted floor E
    fig.canvas.draw()  # renders without error


def test_plot_power_law_bad_input():
    fig, ax = new_figure()
    with pytest.raises(ValueError, match="x_range"):
        plot_power_law(ax, FIT, (1e8, 1e4))
    with pytest.raises(ValueError, match="x_range"):
        plot_power_law(ax, FIT, (0, 1e4))
    with pytest.raises(ValueError, match="fit"):
        plot_power_law(ax, "not a fit", (1e4, 1e8))
