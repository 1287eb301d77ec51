"""Checks of hyperparameters, run when a cell, a task or a rule is built.

Each check raises ``ValueError(f"{where}: `{name}` must be <range>, got <value>.")``: the function that was
called, the argument, the expected range and the value received. Hyperparameters may be traced JAX values
(a cell built inside ``jax.vmap`` over ``tau_mem``): a traced value is skipped, since only concrete values can
be checked. A concrete array (per-neuron time constants, ``beta``) is checked in every entry, and the message
names the first bad entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_NUMERIC = "iuf"  # numpy kinds a real hyperparameter may have (bools and complex numbers are refused)


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a JAX tracer (under ``jit``, ``vmap``, ``grad``), whose value is not known."""
    return isinstance(value, jax.core.Tracer)


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array, or ``None`` where it is traced (or holds tracers)."""
    if is_traced(value):
        return None
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except (TypeError, ValueError):  # a ragged list, an object numpy cannot read: reported as not a number
        return np.asarray(object())


def _got(value: Any, arr: np.ndarray, bad: np.ndarray) -> str:
    """The value received, or for an array its first bad entry (an array's repr can be long)."""
    if arr.ndim == 0:
        return repr(value)
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{arr[index].item()!r} at index {index} of an array of shape {arr.shape}"


def _real(where: str, name: str, value: Any, ok: Callable[[np.ndarray], np.ndarray], expected: str) -> None:
    arr = _concrete(value)
    if arr is None:
        return
    if arr.dtype.kind not in _NUMERIC:
        raise ValueError(f"{where}: `{name}` must be {expected}, got {value!r} (not a real number).")
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(arr) & ok(arr))
    if np.any(bad):
        raise ValueError(f"{where}: `{name}` must be {expected}, got {_got(value, arr, bad)}.")


def positive(where: str, name: str, value: Any) -> None:
    """``value > 0`` and finite in every entry (time constants, ``dt``, thresholds, surrogate widths)."""
    _real(where, name, value, lambda a: a > 0, "a finite number > 0")


def non_negative(where: str, name: str, value: Any) -> None:
    """``value >= 0`` and finite in every entry (rates, ``beta``, ``c_reg``)."""
    _real(where, name, value, lambda a: a >= 0, "a finite number >= 0")


def finite(where: str, name: str, value: Any) -> None:
    """``value`` finite in every entry (gains, scales, targets)."""
    _real(where, name, value, lambda a: np.ones(a.shape, bool), "a finite number")


def probability(where: str, name: str, value: Any) -> None:
    """``0 <= value <= 1`` in every entry."""
    _real(where, name, value, lambda a: (a >= 0) & (a <= 1), "a probability in [0, 1]")


def decay(where: str, name: str, value: Any) -> None:
    """``0 <= value < 1`` in every entry (a trace's decay per step)."""
    _real(where, name, value, lambda a: (a >= 0) & (a < 1), "a decay in [0, 1)")


def int_at_least(where: str, name: str, value: Any, low: int) -> None:
    """A Python or numpy integer (not a bool, not a float such as ``4.0``) with ``value >= low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        kind = {0: "an int >= 0", 1: "a positive int"}.get(low, f"an int >= {low}")
        raise ValueError(f"{where}: `{name}` must be {kind}, got {value!r}.")


def integer(where: str, name: str, value: Any) -> None:
    """A Python or numpy integer (not a bool, not a float such as ``4.0``), of any sign (a seed)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: `{name}` must be an int, got {value!r}.")


def positive_int(where: str, name: str, value: Any) -> None:
    """A Python or numpy integer ``> 0`` (sizes: ``n_in``, ``n_rec``, ``n_out``, numbers of steps)."""
    int_at_least(where, name, value, 1)


def non_negative_int(where: str, name: str, value: Any) -> None:
    """An integer ``>= 0``: a Python or numpy int, or a concrete integer array (checked in every entry); a
    traced value is skipped (``n_refractory`` may be vmapped over)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        int_at_least(where, name, value, 0)
        return
    arr = _concrete(value)
    if arr is None:
        return
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: `{name}` must be an int >= 0, got {value!r}.")
    bad = arr < 0
    if np.any(bad):
        raise ValueError(f"{where}: `{name}` must be an int >= 0 in every entry, got {_got(value, arr, bad)}.")


def sign(where: str, name: str, value: Any) -> None:
    """``+1`` or ``-1`` in every entry (Dale's signs, Deep R's synapse signs)."""
    _real(where, name, value, lambda a: np.isin(a, (-1, 1)), "+1 or -1")


def boolean(where: str, name: str, value: Any) -> None:
    """A Python or numpy bool (a flag such as ``autapses``: a string or a number would pass as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: `{name}` must be True or False, got {value!r}.")


def one_of(where: str, name: str, value: Any, choices: Iterable[str]) -> None:
    """One of ``choices`` (names: a surrogate, a cell, a split); the message lists them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}: `{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def floating_dtype(where: str, name: str, value: Any) -> None:
    """A floating dtype (``jnp.float32``, ``"float64"``, ``jnp.bfloat16``, ...)."""
    try:
        ok = value is not None and jnp.issubdtype(np.dtype(value), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{where}: `{name}` must be a floating dtype (jnp.float32, jnp.float64, ...), got {value!r}.")


def check_reg(where: str, reg: Any) -> None:
    """A firing-rate regulariser: ``None``, or a ``FiringRateReg(c_reg, f_target)`` with ``c_reg >= 0`` and
    ``f_target`` finite (either may be traced; a traced field is skipped). The messages name ``reg.c_reg``
    or ``reg.f_target``."""
    if reg is None:
        return
    if not (hasattr(reg, "c_reg") and hasattr(reg, "f_target")):
        raise ValueError(f"{where}: `reg` must be an ep.FiringRateReg(c_reg, f_target) or None, got {reg!r}.")
    non_negative(where, "reg.c_reg", reg.c_reg)
    finite(where, "reg.f_target", reg.f_target)
