"""Argument checks shared by every public function of ``book``.

Each check returns the value (as a plain ``int`` or ``float``) when it is allowed
and raises otherwise: ``TypeError`` for a value of the wrong type, ``ValueError``
for one out of range. Every message names the argument, the value and what is
allowed, so a bad call fails at the boundary instead of deep inside torch.

A bool is never a size or a number here, although Python counts it as an int.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np

__all__ = ["integer", "positive_int", "nonnegative_int", "real", "finite_float", "positive_float",
           "nonnegative_float", "probability", "one_of", "optional", "instance", "token_ids",
           "finite_result"]


def _type_error(name: str, value, allowed: str) -> TypeError:
    return TypeError(f"{name} must be {allowed}, got {value!r} of type {type(value).__name__}")


def integer(name: str, value) -> int:
    """``value`` as an ``int``; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _type_error(name, value, "an int")
    return int(value)


def positive_int(name: str, value) -> int:
    """An int >= 1: a size, a count, a number of steps."""
    value = integer(name, value)
    if value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value}")
    return value


def nonnegative_int(name: str, value) -> int:
    """An int >= 0."""
    value = integer(name, value)
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int (>= 0), got {value}")
    return value


def real(name: str, value) -> float:
    """``value`` as a ``float``; ints are accepted, bools, complex numbers and strings are not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _type_error(name, value, "a real number")
    return float(value)


def finite_float(name: str, value) -> float:
    """A real number that is neither infinite nor NaN."""
    value = real(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def positive_float(name: str, value) -> float:
    """A finite real number > 0."""
    value = finite_float(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be a positive finite number (> 0), got {value}")
    return value


def nonnegative_float(name: str, value) -> float:
    """A finite real number >= 0."""
    value = finite_float(name, value)
    if value < 0:
        raise ValueError(f"{name} must be a non-negative finite number (>= 0), got {value}")
    return value


def probability(name: str, value, *, open_low: bool = False, open_high: bool = False) -> float:
    """A number in [0, 1]; ``open_low``/``open_high`` exclude 0 or 1."""
    value = finite_float(name, value)
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (low_ok and high_ok):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def one_of(name: str, value, allowed: Iterable):
    """``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    try:
        ok = value in allowed
    except TypeError:  # an unhashable or incomparable value
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def optional(check, name: str, value, **kwargs):
    """``None``, or a value that passes ``check``: ``optional(positive_int, "log_every", x)``."""
    return None if value is None else check(name, value, **kwargs)


def instance(name: str, value, types, allowed: str | None = None):
    """``value`` if it is an instance of ``types`` (a type or a tuple of them); else TypeError."""
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise _type_error(name, value, allowed or f"a {names}")
    return value


def token_ids(vocab_size: int, **tensors):
    """Check tensors of token ids, given by name: ``token_ids(V, idx=idx, targets=targets)``.

    Each must be a tensor of an integer dtype (``TypeError``) with every id in ``[0, vocab_size)``
    (``ValueError`` naming the tensor, the offending id and the allowed range). The range check is
    one min/max over all of them: a single device sync on a GPU. Tensors given as ``None`` are
    skipped.
    """
    import torch  # here, so that checks stay importable (and fast) without torch

    given = {name: t for name, t in tensors.items() if t is not None}
    for name, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise _type_error(name, t, "a tensor of token ids")
        if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
            raise TypeError(f"{name} must be a tensor of integer token ids, got dtype {t.dtype}")
    # a meta tensor (shapes only, as when counting FLOPs) has no ids to check
    nonempty = {name: t for name, t in given.items() if t.numel() and not t.is_meta}
    if not nonempty:
        return
    dev = next(iter(nonempty.values())).device
    bounds = torch.stack([torch.stack(t.aminmax()).to(device=dev, dtype=torch.int64)
                          for t in nonempty.values()])
    for name, (low, high) in zip(nonempty, bounds.tolist()):
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} must hold token ids in [0, vocab_size={vocab_size}), "
                             f"got {bad}")


def finite_result(value, *names: str) -> float:
    """``value`` if it is a finite real number; else ``ValueError`` blaming the arguments ``names``.

    For results that overflow (or underflow to a division by zero) although every argument was
    finite: the caller learns which arguments are too extreme instead of receiving inf or nan.
    """
    if isinstance(value, complex) or not math.isfinite(value):
        raise ValueError(f"{', '.join(names)} are too extreme: the result is {value}, "
                         "not a finite number")
    return value


def positive_array(name: str, value):
    """A positive finite number, or an array of them: a ``float`` or a float ``ndarray`` back.

    For formulas that take one size or many (``loss_of_n(N)``); bools and non-numbers are refused.
    """
    if isinstance(value, bool) or isinstance(value, str):
        raise _type_error(name, value, "a positive number or an array of positive numbers")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _type_error(name, value, "a positive number or an array of positive numbers") from None
    if arr.size == 0 or np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite (every entry > 0), got {value!r}")
    return arr if arr.ndim else float(arr)
