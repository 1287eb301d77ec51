"""Sparse and sign-constrained connectivity: masks drawn from a key, Dale's signs, and how a cell applies them.

A mask is a boolean array in the orientation of the weight it masks; a masked-out entry is multiplied by zero
in the cell's synapse, so it has no effect and gets exactly zero gradient under every rule, and ``init``
stores it as zero. Dale's law is a parametrisation: the weights from presynaptic neuron ``i`` are
``dale[i] * |w[:, i]|``, so every optimizer keeps the signs (nothing needs to be chained in optax). A weight
whose update carries it across zero comes back with its own sign: its magnitude reflects off zero (at
exactly zero its gradient is one-sided, ``d|w|/dw = 1``, so it is not stuck there).

An index table is the compressed form of a fixed fan-in: ``pre[j]`` lists the ``K`` presynaptic partners of
neuron ``j``, and a cell given tables (``lif(..., pre_in=, pre_rec=)``) stores ``(n_post, K)`` weights, one
per synapse, in the order of its table. :func:`to_dense` and :func:`to_compressed` map such parameters (and
their gradients, which have their shape) to the dense ``(n_post, n_pre)`` view and back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper


def bernoulli_mask(key, shape: tuple, p) -> jax.Array:
    """A boolean mask of ``shape``, each entry ``True`` with probability ``p`` independently.

    Args:
      key: a ``jax.random.key``.
      shape: the mask's shape, in the orientation of the weight it masks (``(n_post, n_pre)`` for
        :func:`lif` and :func:`alif`; transpose it for :func:`rnn`'s ``(pre, post)`` kernels).
      p: the connection probability, in ``[0, 1]``.
    """
    _hyper.probability("bernoulli_mask", "p", p)
    return jax.random.bernoulli(key, p, tuple(shape))


def fan_in_mask(key, shape: tuple, k: int, *, autapses: bool = True) -> jax.Array:
    """A boolean ``(n_post, n_pre)`` mask in which every postsynaptic neuron (row) has exactly ``k``
    presynaptic partners, drawn uniformly without replacement (fixed fan-in).

    Args:
      key: a ``jax.random.key``.
      shape: ``(n_post, n_pre)``; transpose the result for :func:`rnn`'s ``(pre, post)`` kernels.
      k: presynaptic partners per neuron, an int in ``[0, n_pre]`` (``n_pre - 1`` without autapses).
      autapses: whether a neuron may be its own partner (a square recurrent mask); ``False`` never draws the
        diagonal.
    """
    n_post, n_pre = (int(s) for s in shape)
    _hyper.boolean("fan_in_mask", "autapses", autapses)
    available = n_pre - (0 if autapses else 1)
    if not autapses and n_post != n_pre:
        raise ValueError(f"fan_in_mask: `autapses=False` needs a square shape, got {tuple(shape)}.")
    _hyper.non_negative_int("fan_in_mask", "k", k)
    if k > available:
        raise ValueError(
            f"fan_in_mask: `k` must be at most {available} (n_pre = {n_pre}"
            f"{', less the diagonal' if not autapses else ''}), got {k}."
        )
    scores = jax.random.uniform(key, (n_post, n_pre))
    if not autapses:
        scores = jnp.where(jnp.eye(n_post, dtype=bool), -1.0, scores)
    threshold = jnp.sort(scores, axis=1)[:, n_pre - k : n_pre - k + 1] if k else jnp.full((n_post, 1), 2.0)
    return scores >= threshold


def dale_signs(n: int, excitatory=0.8) -> jax.Array:
    """Dale's signs for ``n`` neurons: the first ``round(excitatory * n)`` excitatory (``+1``), the rest
    inhibitory (``-1``), as ``float32`` (the cell casts them). ``excitatory`` is a fraction in ``[0, 1]``."""
    _hyper.positive_int("dale_signs", "n", n)
    _hyper.probability("dale_signs", "excitatory", excitatory)
    n_exc = int(round(float(excitatory) * n))
    return jnp.concatenate([jnp.ones(n_exc), -jnp.ones(n - n_exc)])


def check_mask(where: str, name: str, mask: Any, shape: tuple) -> None:
    """``mask`` is ``None`` or a boolean array of ``shape`` (a ``ValueError`` names the argument, the expected
    and the actual shape or dtype); a traced mask is checked for its shape and dtype only."""
    if mask is None:
        return
    arr = mask if isinstance(mask, (jax.Array, np.ndarray)) else np.asarray(mask)
    if arr.dtype != bool:
        raise ValueError(f"{where}: `{name}` must be a boolean array of shape {shape}, got dtype {arr.dtype}.")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{where}: `{name}` must have shape {shape}, got {tuple(arr.shape)}.")


def check_dale(where: str, dale: Any, n: int) -> None:
    """``dale`` is ``None`` or ``n`` signs, each ``+1`` or ``-1`` (checked where concrete)."""
    if dale is None:
        return
    arr = dale if isinstance(dale, (jax.Array, np.ndarray)) else np.asarray(dale)
    if tuple(arr.shape) != (n,):
        raise ValueError(f"{where}: `dale` must have shape ({n},), one sign per presynaptic neuron, got {arr.shape}.")
    _hyper.sign(where, "dale", arr)


def constrain(w, mask=None, dale=None, pre_axis: int = 1):
    """The weight a cell uses: ``w`` masked (``w * mask``) and, with Dale's signs, ``dale * |w|`` along the
    presynaptic axis ``pre_axis``. Applied in ``synapse``, it is what every rule differentiates through."""
    if dale is not None:
        shape = [1, 1]
        shape[pre_axis] = -1
        w = jnp.abs(w) * jnp.reshape(jnp.asarray(dale, w.dtype), shape)
    return w if mask is None else w * jnp.asarray(mask, w.dtype)


def fan_in(mask, n: int, pre_axis: int = 1):
    """The mean number of presynaptic partners per neuron under ``mask`` (``n`` without one, at least 1): a
    masked weight's initial values are drawn with scale ``1 / sqrt(fan_in)``."""
    if mask is None:
        return n
    return jnp.maximum(jnp.mean(jnp.sum(jnp.asarray(mask), axis=pre_axis)), 1)


def fan_in_indices(key, shape: tuple, k: int, *, autapses: bool = True) -> jax.Array:
    """The index table of a fixed fan-in: ``(n_post, k)`` int32, row ``j`` the ``k`` presynaptic partners of
    neuron ``j`` in increasing order, drawn as :func:`fan_in_mask` draws them (the same key gives the same
    synapses). Pass it as ``pre_in`` or ``pre_rec`` of :func:`lif` or :func:`alif`."""
    mask = fan_in_mask(key, shape, k, autapses=autapses)
    return jnp.argsort(~mask, axis=1, stable=True)[:, :k].astype(jnp.int32)


def to_dense(w, pre, n_pre: int) -> jax.Array:
    """Compressed ``(n_post, K)`` weights (or their gradients) as the dense ``(n_post, n_pre)`` view: entry
    ``(j, pre[j, c])`` holds ``w[j, c]``, every absent synapse zero. A boolean ``w`` gives the mask."""
    n_post = jnp.shape(w)[0]
    rows = jnp.arange(n_post)[:, None]
    dense = jnp.zeros((n_post, int(n_pre)), jnp.asarray(w).dtype)
    return dense.at[rows, pre].set(w)


def to_compressed(dense, pre) -> jax.Array:
    """The dense ``(n_post, n_pre)`` view (weights or gradients) back to the ``(n_post, K)`` entries of the
    table ``pre``: the inverse of :func:`to_dense` on the synapses of ``pre``."""
    return jnp.take_along_axis(jnp.asarray(dense), jnp.asarray(pre), axis=1)


def check_table(where: str, name: str, pre: Any, n_post: int, n_pre: int, autapses: bool = True) -> None:
    """``pre`` is an integer ``(n_post, K)`` index table into ``n_pre`` presynaptic neurons; where it is
    concrete, every entry in range, no partner twice in a row, and no neuron its own partner without
    ``autapses`` (a ``ValueError`` names the argument, the expected and the actual value)."""
    arr = pre if isinstance(pre, (jax.Array, np.ndarray)) else np.asarray(pre)
    if not jnp.issubdtype(arr.dtype, jnp.integer) or arr.ndim != 2 or arr.shape[0] != n_post:
        raise ValueError(
            f"{where}: `{name}` must be an integer index table of shape ({n_post}, K), got {arr.dtype} of "
            f"shape {tuple(arr.shape)}."
        )
    if _hyper.is_traced(arr):
        return
    arr = np.asarray(arr)
    if arr.size and (arr.min() < 0 or arr.max() >= n_pre):
        raise ValueError(f"{where}: `{name}` entries must be in [0, {n_pre}), got [{arr.min()}, {arr.max()}].")
    ordered = np.sort(arr, axis=1)
    if np.any(ordered[:, 1:] == ordered[:, :-1]):
        row = int(np.nonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1))[0][0])
        raise ValueError(f"{where}: `{name}` lists a presynaptic partner twice in row {row}: {arr[row].tolist()}.")
    if not autapses and np.any(arr == np.arange(n_post)[:, None]):
        row = int(np.nonzero(np.any(arr == np.arange(n_post)[:, None], axis=1))[0][0])
        raise ValueError(f"{where}: `{name}` connects neuron {row} to itself, but `autapses` is False.")
