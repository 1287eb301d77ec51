"""Deep R (Bellec, Kappel, Maass and Legenstein 2018, "Deep rewiring: training very sparse deep networks"):
synapses that cross zero are removed and as many are drawn anew, each neuron keeping its number of synapses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _hyper as hyper


def deep_r(key, weights, masks, signs, *, learning_rate=0.0, l1=0.0, temperature=0.0, autapses=True):
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

    Args:
      key: a ``jax.random.key`` (the new synapses, and the noise).
      weights: the weights after the optimizer's update, an array ``(n_post, n_pre)`` or a pytree of them
        (transpose ``rnn``'s ``(pre, post)`` kernels around the call).
      masks: the boolean masks before the update, the structure of ``weights``.
      signs: the synapses' fixed signs, ``+1`` or ``-1``, each broadcastable to its weight: per synapse,
        or ``dale[None, :]`` per presynaptic neuron. A cell built with ``dale`` stores magnitudes: pass
        ``1``.
      learning_rate: ``eta`` of the L1 and noise terms, ``>= 0``.
      l1: the L1 penalty ``alpha``, ``>= 0``.
      temperature: the noise temperature ``T``, ``>= 0``.
      autapses: whether a neuron may draw itself, a bool for every weight or one per weight (the structure
        of ``weights``); ``False`` (a square recurrent matrix) never draws the diagonal.

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
    keys = jax.random.split(key, len(leaves))
    out = [
        _rewire(k, w, m, s, learning_rate, l1, temperature, a)
        for k, w, m, s, a in zip(keys, leaves, per_leaf(masks), per_leaf(signs), autapse_leaves)
    ]
    return treedef.unflatten([w for w, _ in out]), treedef.unflatten([m for _, m in out])


def _check(w, mask, sign, autapses):
    if getattr(mask, "dtype", None) != jnp.bool_ or tuple(mask.shape) != tuple(w.shape):
        raise ValueError(
            f"deep_r: each mask must be a boolean array of its weight's shape {tuple(w.shape)}, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} of shape {tuple(getattr(mask, 'shape', ()))}."
        )
    if w.ndim != 2 or (not autapses and w.shape[0] != w.shape[1]):
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


def _rewire(key, w, mask, sign, learning_rate, l1, temperature, autapses):
    """One weight matrix's step (see :func:`deep_r`)."""
    _check(w, mask, sign, autapses)
    k_noise, k_draw = jax.random.split(key)
    s = jnp.broadcast_to(jnp.asarray(sign, w.dtype), w.shape)
    theta = s * w - learning_rate * l1
    theta = theta + jnp.sqrt(2.0 * learning_rate * temperature) * jax.random.normal(k_noise, w.shape, w.dtype)
    removed = mask & (theta < 0)
    kept = mask & ~removed
    allowed = ~kept if autapses else ~kept & ~jnp.eye(w.shape[0], dtype=bool)
    scores = jnp.where(allowed, jax.random.uniform(k_draw, w.shape), -1.0)
    rank = jnp.argsort(jnp.argsort(-scores, axis=1), axis=1)  # 0 for each row's best-scored absent synapse
    drawn = allowed & (rank < jnp.sum(removed, axis=1, keepdims=True))
    new_mask = kept | drawn
    return jnp.where(kept, s * theta, 0.0).astype(w.dtype), new_mask
