"""Spike functions: a Heaviside step forward, a surrogate pseudo-derivative in forward and reverse mode.

Written with ``jax.custom_jvp`` (never ``custom_vjp``) so that forward-mode rules can push tangents
through a spike and reverse mode transposes the same linear rule.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .. import _hyper

_SHAPES: dict[str, Callable] = {
    # psi(u) with u = (v - threshold) / width; the pseudo-derivative is height * psi(u).
    "piecewise_linear": lambda u: jnp.maximum(0.0, 1.0 - jnp.abs(u)),
    "exponential": lambda u: jnp.exp(-jnp.abs(u)),
    "fast_sigmoid": lambda u: 1.0 / (1.0 + jnp.abs(u)) ** 2,
    "arctan": lambda u: 1.0 / (1.0 + (jnp.pi * u) ** 2),
}

SURROGATES = tuple(_SHAPES)


def _make_spike(shape: Callable) -> Callable:
    @jax.custom_jvp
    def spike(x, height, width):
        del height, width
        return (x >= 0).astype(x.dtype)

    @spike.defjvp
    def spike_jvp(primals, tangents):
        x, height, width = primals
        psi = height * shape(x / width)
        return spike(x, height, width), psi.astype(x.dtype) * tangents[0]

    return spike


_SPIKES = {name: _make_spike(shape) for name, shape in _SHAPES.items()}


def spike_fn(surrogate: str) -> Callable:
    """Returns ``spike(x, height, width)``: ``x >= 0`` forward, ``height * psi(x / width)`` as derivative.

    Shapes ``psi(u)``: ``piecewise_linear`` ``max(0, 1 - |u|)`` (NEST's and Bellec et al.'s),
    ``exponential`` ``exp(-|u|)``, ``fast_sigmoid`` ``1 / (1 + |u|)^2`` and ``arctan`` ``1 / (1 + (pi u)^2)``.
    """
    _hyper.one_of("spike_fn", "surrogate", surrogate, SURROGATES)
    return _SPIKES[surrogate]
