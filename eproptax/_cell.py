"""The cell contract: a recurrent cell is a NamedTuple of pure functions.

Every cell has ``init``, ``init_carry`` and ``apply``. A *neuron cell* (every cell the library ships, and
any cell made with :func:`make_cell`) also exposes the split that the forward-mode rules need:

``synapse(params, x, z_prev) -> a``
    The synaptic stage: for each of the ``n`` neurons a small vector of ``k`` linear projections of the
    inputs ``x`` (shape ``(n_in,)``) and of the layer's own previous outputs ``z_prev`` (shape ``(n,)``),
    one entry per gate; shape ``(n, k)``. It must be affine in ``(x, z_prev)`` and it is where every
    trainable parameter enters. The path ``z_prev -> a`` is the *explicit* recurrence.
``dynamics(h_prev, a) -> h``
    The neuron-wise dynamics: neuron ``j``'s new state from its own previous state and its own synaptic
    vector ``a[j]`` only. ``h`` is a pytree whose leaves have leading axis ``n`` (floating leaves are
    differentiated; integer leaves, such as a refractory counter, are not). A neuron's own previous output
    used here (the LIF reset, the ALIF adaptation) is the *implicit* recurrence.
``output(h) -> z``
    The neuron-wise output, shape ``(n,)`` (a spike with a surrogate derivative, or a smooth function).

``apply`` is then ``h = dynamics(h_prev, synapse(params, x, output(h_prev))); return h, output(h)``.
``leak`` declares which differentiable state variables are linear leaky integrators of the synaptic input,
``h_c = decay * h_c_prev + gain * a[:, 0]`` with ``k = 1`` and no other variable read: a pair
``(decay, gain)`` when the state is that one variable (a leaky readout, a LIF neuron whose reset is
detached), or a tuple with one entry per differentiable variable (the floating leaves of the state, in
order), each a pair or ``None`` (an ALIF neuron: ``((alpha, gain), None)``, the membrane leaks, the
adaptation does not). A leaky variable's eligibility trace is the same for every neuron, the presynaptic
trace ``zbar``, so the rules keep one vector instead of one trace per synapse; a cell whose whole state
is one leaky variable also collapses into a scalar filter. It is a promise about ``dynamics``, and the
tests check every shipped cell's promise against autodiff.

``synapses`` declares a cell that stores its weights per synapse (compressed, a fixed number ``K`` per
neuron): a pair ``(pre, weights)`` with ``pre`` the ``(n, K)`` integer indices into ``v = [x, z_prev, 1]``
of each neuron's synapses and ``weights(params) -> (n, k, K)`` their weights, so that ``synapse(params, x,
z_prev)[j] = weights(params)[j] @ v[pre[j]]``. e-prop's family then keeps its traces in that layout and
pulls its gradient back through ``weights`` (no ``(n, m)`` array); ``pre`` may be a traced value (Deep R's
rewired connectivity, docs/cells.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._typing import Array, Carry, Params, PRNGKey


class Cell(NamedTuple):
    """A recurrent cell: pure functions over explicit parameters and state.

    Attributes:
      init: ``init(key) -> params``.
      init_carry: ``init_carry(params) -> carry``, the unbatched state of one sequence.
      apply: ``apply(params, carry, x) -> (carry, outputs)`` for one time step, ``x`` of shape ``(n_in,)``.
      synapse: the synaptic stage of a neuron cell (see the module docstring), else ``None``.
      dynamics: the neuron-wise dynamics of a neuron cell, else ``None``.
      output: the neuron-wise output of a neuron cell, else ``None``.
      leak: the state variables that are linear leaky integrators of ``a`` (see above), else ``None``.
      layers: for a :func:`stack`, its layers in order; ``()`` for a single cell.
      n_in: the input width.
      n_out: the output width.
      synapses: for a cell storing its weights per synapse, ``(pre, weights)`` (see above), else ``None``.
    """

    init: Callable[[PRNGKey], Params]
    init_carry: Callable[[Params], Carry]
    apply: Callable[[Params, Carry, Array], tuple[Carry, Array]]
    synapse: Callable[[Params, Array, Array], Array] | None = None
    dynamics: Callable[[Any, Array], Any] | None = None
    output: Callable[[Any], Array] | None = None
    leak: tuple | None = None
    layers: tuple = ()
    n_in: int | None = None
    n_out: int | None = None
    synapses: tuple | None = None


def make_cell(
    *,
    n_in: int,
    n_out: int,
    init: Callable[[PRNGKey], Params],
    init_carry: Callable[[Params], Carry],
    synapse: Callable[[Params, Array, Array], Array],
    dynamics: Callable[[Any, Array], Any],
    output: Callable[[Any], Array],
    leak: tuple | None = None,
    synapses: tuple | None = None,
) -> Cell:
    """Builds a neuron cell from its synaptic stage, its neuron-wise dynamics and its output.

    This is how every cell of the library is written, and how a user writes a new neuron model: the
    forward-mode rules (``rtrl``, ``eprop``, ``eprop_m``, ``deep_eprop``) derive every Jacobian they need
    from these three functions with JAX autodiff.

    Example (a leaky tanh unit, ``h = lam * h + (1 - lam) * a``, ``z = tanh(h)``)::

      def leaky_tanh(n_in, n, lam=0.9):
          def init(key):
              k1, k2 = jax.random.split(key)
              return {"w_in": jax.random.normal(k1, (n, n_in)) / n_in**0.5,
                      "w_rec": jax.random.normal(k2, (n, n)) / n**0.5}
          return ep.cells.make_cell(
              n_in=n_in, n_out=n, init=init,
              init_carry=lambda p: jnp.zeros(n, p["w_in"].dtype),
              synapse=lambda p, x, z: (p["w_in"] @ x + p["w_rec"] @ z)[:, None],
              dynamics=lambda h, a: lam * h + (1 - lam) * a[:, 0],
              output=jnp.tanh,
              leak=(lam, 1 - lam))

    Sparse or sign-constrained connectivity (docs/cells.md) goes in ``synapse``: multiply each weight by its
    boolean mask there (``(p["w_rec"] * mask) @ z``), and for Dale's law use ``dale[None, :] *
    jnp.abs(p["w_rec"])``; every rule differentiates through it, so a masked weight gets zero gradient.
    A neuron that stores only its synapses' weights (``(n, K)`` arrays read through index tables, as
    :func:`~eproptax.cells.lif` with ``pre_in`` and ``pre_rec``) declares ``synapses=(pre, weights)``.

    Args:
      n_in: input width.
      n_out: number of neurons (the output width).
      init: ``init(key) -> params``.
      init_carry: ``init_carry(params) -> h``, the neuron state, every leaf with leading axis ``n_out``.
      synapse: ``synapse(params, x, z_prev) -> a`` of shape ``(n_out, k)``, affine in ``(x, z_prev)``.
      dynamics: ``dynamics(h_prev, a) -> h``, neuron-wise.
      output: ``output(h) -> z`` of shape ``(n_out,)``, neuron-wise.
      leak: optional ``(decay, gain)``, or one such pair or ``None`` per differentiable state variable;
        see :class:`Cell`.
      synapses: optional ``(pre, weights)`` for a cell storing its weights per synapse; see :class:`Cell`.

    Returns:
      A :class:`Cell`.
    """

    def apply(params, carry, x):
        a = synapse(params, x, output(carry))
        carry = dynamics(carry, a)
        return carry, output(carry)

    return Cell(init, init_carry, apply, synapse, dynamics, output, leak, (), n_in, n_out, synapses)


def layers_of(cell: Cell) -> tuple[Cell, ...]:
    """The layers of a cell: a stack's layers, or the cell itself."""
    return cell.layers if cell.layers else (cell,)


def is_neuron(cell: Cell) -> bool:
    """Whether a cell exposes the synapse / dynamics / output split."""
    return cell.synapse is not None and cell.dynamics is not None and cell.output is not None


def stack(*cells: Cell) -> Cell:
    """A cell whose layers run in sequence within one time step.

    Layer ``l + 1`` sees the output of layer ``l`` at the same step. Nested stacks are flattened, so
    ``params`` and ``carry`` are tuples with one entry per layer.

    Args:
      *cells: the layers, bottom to top; each one's ``n_out`` must equal the next one's ``n_in``.

    Returns:
      A :class:`Cell` with ``layers`` set.
    """
    if not cells:
        raise ValueError("stack: expected at least one cell, got none.")
    layers = tuple(layer for cell in cells for layer in layers_of(cell))
    for i, (lower, upper) in enumerate(zip(layers[:-1], layers[1:])):
        if lower.n_out is not None and upper.n_in is not None and lower.n_out != upper.n_in:
            raise ValueError(
                f"stack: layer {i} outputs {lower.n_out} values but layer {i + 1} expects n_in="
                f"{upper.n_in}; make each layer's n_in equal to the n_out of the layer below."
            )

    def init(key):
        keys = jax.random.split(key, len(layers))
        return tuple(layer.init(k) for layer, k in zip(layers, keys))

    def init_carry(params):
        return tuple(layer.init_carry(p) for layer, p in zip(layers, params))

    def apply(params, carry, x):
        new_carry = []
        for layer, p, c in zip(layers, params, carry):
            c, x = layer.apply(p, c, x)
            new_carry.append(c)
        return tuple(new_carry), x

    return Cell(init, init_carry, apply, layers=layers, n_in=layers[0].n_in, n_out=layers[-1].n_out)


def _is_pair(leak) -> bool:
    return len(leak) == 2 and not any(e is None or isinstance(e, (tuple, list)) for e in leak)


def variable_leaks(cell: Cell, s: int, k: int) -> tuple:
    """The cell's ``leak`` per differentiable state variable: ``(decay, gain)`` or ``None`` for each of ``s``."""
    leak = cell.leak
    if leak is None:
        return (None,) * s
    try:
        leaks = (tuple(leak),) if _is_pair(leak) else tuple(None if e is None else tuple(e) for e in leak)
    except TypeError:  # not a pair, nor a sequence of pairs
        leaks = ()
    if len(leaks) != s or any(e is not None and len(e) != 2 for e in leaks):
        raise ValueError(
            f"leak: expected a pair (decay, gain) for a one-variable state, or one pair or None "
            f"per differentiable state variable ({s} here), got {leak!r}."
        )
    if k != 1 and any(e is not None for e in leaks):
        raise ValueError(
            f"leak: a leaky state variable integrates one synaptic entry (k = 1), but synapse "
            f"returns k = {k} entries per neuron."
        )
    return leaks


def scalar_leak(cell: Cell) -> tuple | None:
    """``(decay, gain)`` when the cell's whole differentiable state is one leaky variable, else ``None``."""
    leak = cell.leak
    if leak is None:
        return None
    if _is_pair(leak):
        return tuple(leak)
    return tuple(leak[0]) if len(leak) == 1 and leak[0] is not None else None


def float_state(h: Any) -> Array:
    """Stacks the floating leaves of a neuron state into an array of shape ``(n, s)``."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(h) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.stack(leaves, axis=-1)


def with_float_state(h: Any, values: Array) -> Any:
    """Replaces the floating leaves of ``h`` by the columns of ``values`` (inverse of :func:`float_state`)."""
    leaves, treedef = jax.tree_util.tree_flatten(h)
    out, i = [], 0
    for leaf in leaves:
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            out.append(values[..., i].astype(leaf.dtype))
            i += 1
        else:
            out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)
