"""The house style for every figure in the course.

Scaling-law figures are nearly all the same picture: loss against size on log-log axes,
one colour per model size, a fitted power law on top. These helpers make that picture
look the same in every lesson. Nothing here picks a backend or shows a window, so it
runs headless (tests, nbval, the site build).
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np

from book import checks

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "figure.figsize": (6.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.grid": True,
    "axes.grid.which": "both",  # on log axes the minor grid is what lets you read values off
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
}


def use_style() -> None:
    """Apply the course style to every figure made from now on."""
    mpl.rcParams.update(STYLE)


def size_colors(sizes, cmap: str = "viridis") -> dict:
    """One colour per model size, dark for small and light for large, as hex strings.

    The same sizes always get the same colours, in whatever order they come.
    """
    unique = sorted(set(sizes))
    if not unique:
        return {}
    # Stop short of viridis' pale yellow end, which vanishes on a white page.
    positions = np.linspace(0.0, 0.85, len(unique)) if len(unique) > 1 else [0.45]
    colormap = mpl.colormaps[cmap]
    return {size: mpl.colors.to_hex(colormap(p)) for size, p in zip(unique, positions)}


def loglog_axes(ax=None, xlabel: str = "parameters", ylabel: str = "loss"):
    """Make ``ax`` (default: the current axes) log-log, with labels; returns it."""
    ax = plt.gca() if ax is None else ax
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # Losses span less than a decade: label them 2, 3, 4 rather than 2x10^0, 3x10^0.
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    return ax


class PlainLogFormatter(mticker.LogFormatter):
    """Log-axis labels in one plain format: "0.6" beside "1", where LogFormatter writes "6e-01"."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 4.0, **subplots_kw):
    """A styled figure of ``nrows x ncols`` panels, each ``width x height`` inches: (fig, axes).

    Like ``plt.subplots``: ``axes`` is one Axes for a single panel, else an array.
    """
    ncols, nrows = checks.positive_int("ncols", ncols), checks.positive_int("nrows", nrows)
    width, height = checks.positive_float("width", width), checks.positive_float("height", height)
    use_style()
    subplots_kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **subplots_kw)


def plot_power_law(ax, fit, x_range, n: int = 200, asymptote: bool = False, **kw):
    """Draw a fitted power law (a ``book.fit.PowerLawFit``) over ``x_range = (low, high)``.

    Dashed and labelled with its formula unless ``kw`` says otherwise; ``asymptote=True``
    also draws the floor E as a dotted line. Returns the Line2D.
    """
    if not callable(getattr(fit, "predict", None)):
        raise ValueError(f"fit must be a PowerLawFit (with a predict method), got {type(fit).__name__}")
    try:
        low, high = (float(v) for v in x_range)
    except (TypeError, ValueError):
        raise ValueError(f"x_range must be a pair (low, high) of numbers, got {x_range!r}") from None
    if not 0 < low < high < np.inf:
        raise ValueError(f"x_range must be (low, high) with 0 < low < high, got {tuple(x_range)!r}")
    xs = np.geomspace(low, high, n)  # evenly spaced on the log axis the line is drawn on
    kw = {"linestyle": "--", "label": str(fit), **kw}
    (line,) = ax.plot(xs, fit.predict(xs), **kw)
    if asymptote and getattr(fit, "E", 0) > 0:
        ax.axhline(fit.E, color=line.get_color(), linestyle=":", linewidth=1)
    return line
