"""Every device-specific speed trick of the library, each a named function with a two-line contract.

None of these changes a value: each one changes only how XLA compiles the same arithmetic (which buffer
is written in place, what is evaluated once, which loop a product runs in). They are applied by name where
they are needed, and ``tests/test_compiled.py`` reads the compiled CPU program and fails when one of them
stops having its effect. docs/design.md ("Speed tricks") says why each exists; benchmarks/README.md
has the numbers.

The stages call them through this module (``tricks.formed_once(...)``), so a benchmark or a test can
switch one off by patching this module's attribute.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------------------------------------
# Platform defaults, read when a rule is traced
# ----------------------------------------------------------------------------------------------------------

# Time steps per iteration of the scan for ``unroll=None``, per platform (``lax.platform_dependent``'s
# names), 1 on the others. Setting an entry (``ep.DEFAULT_UNROLL["tpu"] = 8``) changes the default of the
# functions traced afterwards. Pass ``unroll=1`` where GPU memory or compile time binds.
DEFAULT_UNROLL = {"cpu": 1, "cuda": 4}

# Time steps per chunk for ``chunk=None`` (:func:`~eproptax._engine.scan_rule`), per platform as
# :data:`DEFAULT_UNROLL`, 1 (no chunks) on the others, for the networks with a gated recurrent layer (GRU,
# LSTM: ``_plan.gated``) only. Read when a rule is traced, as DEFAULT_UNROLL.
DEFAULT_CHUNK = {"cpu": 64}


def scan(f: Callable, init, xs, length: int | None = None, unroll: int | None = None):
    """``lax.scan(f, init, xs, length, unroll)``, with ``unroll=None`` the lowering platform's :data:`DEFAULT_UNROLL`.

    Contract: each distinct value is staged out once (``lax.platform_dependent``) and chosen when the
    function is lowered, so a compiled program holds one loop, the same as with that value passed."""
    if unroll is not None:
        return jax.lax.scan(f, init, xs, length=length, unroll=unroll)

    def with_unroll(u):
        return lambda init, xs: jax.lax.scan(f, init, xs, length=length, unroll=u)

    branches = {platform: with_unroll(u) for platform, u in DEFAULT_UNROLL.items() if u != 1}  # 1: the default
    return jax.lax.platform_dependent(init, xs, default=with_unroll(1), **branches)


def by_platform_chunk(run: Callable[[int], Callable], state, time: int, length: Callable | None = None):
    """``run(K)(state)`` with ``K`` the lowering platform's :data:`DEFAULT_CHUNK` (1 where unset), or
    ``length(K, time)`` where a rule sets its own (pp-prop's: :meth:`~eproptax._pp_prop.PpPlan.chunk_length`).

    Contract: by default a chunk longer than the sequence is not staged (it would step), so a short sequence
    compiles to the stepping program alone."""
    length = length or (lambda K, time: K if K <= time else 1)
    branches = {platform: run(length(K, time)) for platform, K in DEFAULT_CHUNK.items() if length(K, time) > 1}
    return jax.lax.platform_dependent(state, default=run(1), **branches) if branches else run(1)(state)


# ----------------------------------------------------------------------------------------------------------
# Evaluation order and fusion
# ----------------------------------------------------------------------------------------------------------


def formed_once(tree):
    """``tree`` unchanged in value, but formed once, at its own size, by XLA's CPU backend.

    Contract: a per-neuron block (``D``, ``dh/da``, ``dz/dh``) or presynaptic vector that per-synapse passes
    broadcast is evaluated once per step, not again inside every pass for every trace element. XLA's CPU
    fusion duplicates a cheap producer into each consumer but never one it counts as expensive, a
    division: each leaf ``a`` is divided by ``1 + 0 * a`` (``a``'s non-finite values zeroed), exact for
    every value."""

    def once(a):
        return a / (1 + 0 * jnp.where(jnp.isfinite(a), a, jnp.zeros_like(a)))

    return jax.tree_util.tree_map(once, tree)


def written_after(*trees):
    """A zero that depends on every array of ``trees``, or ``None`` if they hold none.

    Contract: added to the previous traces where their update reads them, it orders the update after every
    other reader of the previous traces (the ``trees``), so XLA writes the new traces into the loop-carried
    buffers in place instead of copying a trace every step. It is ``0 * x`` for one finite element ``x``
    of the arrays, never a NaN."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(trees) if leaf.size]
    if not leaves:
        return None
    x = sum(leaf.reshape(-1)[0] for leaf in leaves)
    return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x)) * jnp.zeros_like(x)


def transposed_outer(post, pre):
    """``sum_b post[b, j] pre[b, i]``, shape ``(n, m)``, from transposed copies of the two small factors.

    Contract: the batch contraction runs as a dot over both trailing axes, the faster of XLA's CPU paths;
    the ``optimization_barrier`` keeps XLA from folding the transposes back into a dot over the leading ones."""
    post, pre = jax.lax.optimization_barrier((post.T, pre.T))
    return jnp.einsum("jb,ib->ji", post, pre)


# ----------------------------------------------------------------------------------------------------------
# Layouts of the level-0 (compact) traces
# ----------------------------------------------------------------------------------------------------------


def neuron_major(tree):
    """Batch-major ``(B, n, ...)`` arrays as neuron-major ``(n, B, ...)``, the layout of level-0 compact traces.

    Contract: with the batch second, the batch contraction ``einsum("bj,jbgi->jgi")`` is a dot batched over
    the leading neuron axis that reads each trace where it lies, without a transposed copy of the trace."""
    return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree)


def unit_axis_dropped(a, k: int):
    """A compact array ``(., ., k, m)`` (either layout) as stored: ``(., ., m)`` when ``k = 1``, else unchanged.

    Contract: a one-entry trace is computed in its stored layout (not reshaped afterwards), so the batch
    contraction's dot reads it as it is and XLA writes the new trace in place, once."""
    return a[:, :, 0] if k == 1 else a
