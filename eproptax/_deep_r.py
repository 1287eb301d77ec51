"""Deep R (Bellec, Kappel, Maass and Legenstein 2018, "Deep rewiring: training very sparse deep networks"):
synapses that cross zero are removed and as many are drawn anew, each neuron keeping its number of synapses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _hyper as hyper
from .cells._connectivity import check_table, to_dense


def deep_r(key, weights, masks, signs, *, learning_rate=0.0, l1=0.0, temperature=0.0, autapses=True, n_pre=None):
    """One Deep R step on sparse weights, applied after ``optax.apply_updates``: ``(weights, masks)``.

    Each synapse ``k`` has a fixed sign ``s_k`` and a parameter ``theta_k = s_k w_k``, active while
    ``theta_k >= 0``. Deep R adds its L1 and noise terms to the active synapses, ``theta_k <- theta_k - eta
    l1 + sqrt(2 eta T) nu_k`` (``eta = learning_rate``, ``T = temperature``, ``nu_k`` standard normal; both
    terms are off by default), removes every synapse whose ``theta`` is now negative (its weight set to
    exactly zero, its mask entry cleared), and draws, for each postsynaptic neuron (row), as many new
    synapses as it lost, uniformly among its absent ones (never the diagonal with ``autapses=False``; a
    synapse just removed may be drawn again). A new synapse starts at weight zero with its own sign. So the
    number of synapses of every neuron is fixed (the fixed fan-in of :func:`~eproptax.cells.fan_in_mask`),
    and the signs hold.

    Where the connectivity lives: in ``masks``, arrays of fixed shape that the training loop carries and
    passes to the cell (``ep.cells.lif(..., mask_rec=mask)``) inside the jitted step. The masks are then
    traced values, so a rewired network runs the same compiled program (docs/cells.md, "Deep R"). An
    absent synapse is masked inside the cell's synapse, so its gradient is exactly zero until it is drawn.

    Compressed weights (``ep.cells.lif(..., pre_in=, pre_rec=)``): pass the ``(n_post, K)`` weights and
    their int index tables as ``masks``, with ``n_pre``. A removed synapse's slot takes the new synapse
    (its table entry rewritten, its weight zero), so the tables keep their shape ``(n_post, K)`` and, passed
    traced to the cell, the e-prop family's gathered layout follows the rewiring with one compilation. A
    per-synapse sign then belongs to the slot (the ``dale`` of a cell storing magnitudes: pass ``1``).

    Args:
      key: a ``jax.random.key`` (the new synapses, and the noise).
      weights: the weights after the optimizer's update, an array ``(n_post, n_pre)`` or a pytree of them
        (transpose ``rnn``'s ``(pre, post)`` kernels around the call).
      masks: the boolean masks before the update, the structure of ``weights``; or, for compressed
        weights, their int index tables.
      signs: the synapses' fixed signs, ``+1`` or ``-1``, each broadcastable to its weight: per synapse,
        or ``dale[None, :]`` per presynaptic neuron. A cell built with ``dale`` stores magnitudes: pass
        ``1``.
      learning_rate: ``eta`` of the L1 and noise terms, ``>= 0``.
      l1: the L1 penalty ``alpha``, ``>= 0``.
      temperature: the noise temperature ``T``, ``>= 0``.
      autapses: whether a neuron may draw itself, a bool for every weight or one per weight (the structure
        of ``weights``); ``False`` (a square recurrent matrix) never draws the diagonal.
      n_pre: for index tables, the presynaptic population's size: an int for every table, or one per weight
        (the structure of ``weights``, ``None`` on a dense weight).

    Returns:
      ``(weights, masks)``, rewired, in the structure given.
    """
    for name, value in (("learning_rate", learning_rate), ("l1", l1), ("temperature", temperature)):
        hyper.non_negative("deep_r", name, value)
    leaves, treedef = jax.tree_util.tree_flatten(weights)
    bare = treedef == jax.tree_util.tree_structure(0)  # one array: `signs` is one array or number too
    per_leaf = lambda tree: [tree] if bare else treedef.flatten_up_to(tree)
    autapse_leaves = [autapses] * len(leaves) if isinstance(autapses, bool) else per_leaf(autapses)
    for a in autapse_leaves:
        hyper.boolean("deep_r", "autapses", a)
    pre_leaves = [n_pre] * len(leaves) if n_pre is None or isinstance(n_pre, int) else per_leaf(n_pre)
    keys = jax.random.split(key, len(leaves))
    out = [
        _rewire(k, w, m, s, learning_rate, l1, temperature, a, n)
        for k, w, m, s, a, n in zip(keys, leaves, per_leaf(masks), per_leaf(signs), autapse_leaves, pre_leaves)
    ]
    return treedef.unflatten([w for w, _ in out]), treedef.unflatten([m for _, m in out])


def _check(w, mask, sign, autapses, n_pre):
    table = jnp.issubdtype(getattr(mask, "dtype", np.float64), jnp.integer)
    if (getattr(mask, "dtype", None) != jnp.bool_ and not table) or tuple(mask.shape) != tuple(w.shape):
        raise ValueError(
            f"deep_r: each mask must be a boolean array (or an int index table) of its weight's shape "
            f"{tuple(w.shape)}, got {getattr(mask, 'dtype', type(mask).__name__)} of shape "
            f"{tuple(getattr(mask, 'shape', ()))}."
        )
    if table:
        if not isinstance(n_pre, (int, np.integer)) or n_pre < w.shape[1] + (0 if autapses else 1):
            raise ValueError(
                f"deep_r: an index table of {w.shape[1]} synapses per neuron needs `n_pre`, the presynaptic "
                f"population's size, an int >= {w.shape[1] + (0 if autapses else 1)}; got {n_pre!r}."
            )
        check_table("deep_r", "masks", mask, w.shape[0], n_pre, autapses)
    elif w.ndim != 2 or (not autapses and w.shape[0] != w.shape[1]):
        raise ValueError(
            f"deep_r: weights must be (n_post, n_pre) matrices (square with autapses=False), got {w.shape}."
        )
    try:
        np.broadcast_shapes(jnp.shape(sign), w.shape)
    except ValueError:
        raise ValueError(
            f"deep_r: `signs` of shape {jnp.shape(sign)} do not broadcast to the weight {w.shape}."
        ) from None
    hyper.sign("deep_r", "signs", sign)


def _rewire(key, w, mask, sign, learning_rate, l1, temperature, autapses, n_pre):
    """One weight matrix's step (see :func:`deep_r`)."""
    _check(w, mask, sign, autapses, n_pre)
    k_noise, k_draw = jax.random.split(key)
    s = jnp.broadcast_to(jnp.asarray(sign, w.dtype), w.shape)
    theta = s * w - learning_rate * l1
    theta = theta + jnp.sqrt(2.0 * learning_rate * temperature) * jax.random.normal(k_noise, w.shape, w.dtype)
    table = mask.dtype != jnp.bool_
    present = to_dense(jnp.ones(mask.shape, bool), mask, n_pre) if table else mask
    removed = (theta < 0) if table else mask & (theta < 0)
    kept = present & ~(to_dense(removed, mask, n_pre) if table else removed)
    allowed = ~kept if autapses else ~kept & ~jnp.eye(kept.shape[0], kept.shape[1], dtype=bool)
    scores = jnp.where(allowed, jax.random.uniform(k_draw, kept.shape), -1.0)
    best = jnp.argsort(-scores, axis=1)  # each row's absent synapses, best-scored first
    new_w = jnp.where(removed, 0.0, s * theta).astype(w.dtype) if table else jnp.where(kept, s * theta, 0.0)
    if table:  # the removed slots take the best-scored absent synapses, in slot order
        slot = jnp.cumsum(removed, axis=1) - 1
        new_pre = jnp.where(removed, jnp.take_along_axis(best, jnp.maximum(slot, 0), axis=1), mask)
        return new_w, new_pre.astype(mask.dtype)
    rank = jnp.argsort(best, axis=1)  # 0 for each row's best-scored absent synapse
    drawn = allowed & (rank < jnp.sum(removed, axis=1, keepdims=True))
    return new_w.astype(w.dtype), kept | drawn
