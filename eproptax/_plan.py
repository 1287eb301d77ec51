"""The static plan of the e-prop family's estimator: everything fixed once a rule is built.

A rule of the family is a model, an ``order`` (explicit recurrent edges kept) and a ``depth`` (how layers
see each other). From those, :func:`make_plan` resolves every static fact the per-step stages need into
one plain value, a :class:`TracePlan`: each layer's sizes and which of its state variables are leaky or
carried, the influence pairs ``(l, p)`` and their levels, the filter stages, the traces' layout, the
batch axes, and the work and memory of one step. The stages (``_forward``, ``_level0``, ``_dense``,
``_contract``, ``_chunks``) are functions of ``(plan, arrays)``; printing a plan shows what a rule
carries::

    >>> ep.online.eprop(model, loss).plan        # an ALIF(32) layer and a leaky readout
    TracePlan(order=0, depth='spatial', feedback='symmetric', reg=False, self_recurrent=False, neuron_major=True,
      layer 0: n=32 s=2 k=1 m=53 leaky=[0] stored=[0, 1]
      layer 1: n=2 s=1 k=1 m=35 leaky=[0] stored=[0] (a scalar filter)
      pairs=((0, 0),), observed=(0,), filters=((1,),))

Representations. A layer's own level-0 trace is a tuple with one array per *stored* state variable (with
``order=0``, the variables that ``dynamics`` reads; every variable otherwise). A leaky variable's trace is
the presynaptic ``zbar`` ``(m,)``; any other is *compact*, ``(n, k, m)``, stored ``(n, m)`` when ``k = 1``.
Every other influence level is *dense*, ``(n_l, s_l, n_p, k_p, m_p)``. In the *gathered* layout (a sparse
layer: :func:`gathered_layout`) a compact array and a dense level of that layer's parameters keep ``K``
columns, each neuron's synapses, instead of ``m``. Over a batch, compact arrays keep
the batch second, ``(n, B, ...)``, when no dense level reads them (:attr:`TracePlan.neuron_major`); every
other array puts it first.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._cell import Cell, is_neuron, layers_of, scalar_leak, variable_leaks
from ._contract_check import check_cell
from ._jacobians import read_states, synapse_pattern, synapse_struct


class EpropTraces(NamedTuple):
    """Per-example traces of the e-prop family, batched (see the module docstring for the layouts).

    Attributes:
      influence: ``{(l, p): (level_0, ..., level_order)}``: approximations of ``d h^l / d theta^p``.
      filtered: ``{p: (ebar_1, ...)}``, the filtered traces of layer ``p``, one per filter stage.
      readout: the readout layer's own trace (a neuron readout), else ``()``.
    """

    influence: dict
    filtered: dict
    readout: Any


class LayerPlan(NamedTuple):
    """The static facts of one neuron layer."""

    n: int  # neurons
    s: int  # differentiable state variables per neuron
    k: int  # synaptic entries (gates) per neuron
    m: int  # presynaptic values: n_in + n + 1
    leaks: tuple  # per state variable: ``(decay, gain)`` if declared leaky, else ``None``
    stored: tuple  # per state variable: whether its own level-0 trace is carried to the next step
    scalar: tuple | None  # ``(decay, gain)`` when the whole state is one leaky variable (a filter)
    pre: Any = None  # the gathered layout: ``(n, K)`` indices of each neuron's synapses in ``v`` (numpy, or the
    # cell's own table, maybe traced, for a cell storing its weights per synapse)
    valid: Any = None  # ``(n, K)`` numpy booleans, ``False`` on padding (``None``: no padding)

    @property
    def width(self) -> int:
        """The columns a neuron's per-synapse arrays keep: ``m``, or ``K`` in the gathered layout."""
        return self.m if self.pre is None else self.pre.shape[1]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The stored columns ``(n, k, width)``: a gradient's and a compact trace's, and a dense level's (the
        effective weights' ``(n, k, m)`` outside the gathered layout)."""
        return (self.n, self.k, self.width)

    @property
    def kept(self) -> list[int]:
        """The indices of the stored state variables."""
        return [c for c in range(self.s) if self.stored[c]]

    @property
    def compact_shape(self) -> tuple[int, ...]:
        """A compact own trace as stored, per example: ``(n, k, m)``, or ``(n, m)`` when ``k = 1``."""
        return (self.n, self.width) if self.k == 1 else (self.n, self.k, self.width)


class StepCost(NamedTuple):
    """The least work of one step of an online rule over a batch.

    Attributes:
      state_bytes: the online state's size (traces, accumulators, carry).
      bytes: what a step must move: the state read and written once, ``2 * state_bytes``.
      flops: the matrix-product FLOPs a step must do (0 for elementwise trace updates).
    """

    state_bytes: int
    bytes: int
    flops: float


class TracePlan(NamedTuple):
    """Everything static about a rule of the e-prop family (see the module docstring).

    Attributes:
      order: explicit recurrent edges kept (levels ``0 .. order``).
      depth: ``"spatial"``, ``"collapsed"`` or ``"full"``.
      layers: a :class:`LayerPlan` per layer of the stack, the readout last (``None`` for a readout that is
        not a neuron cell).
      pairs: the influences ``(l, p)`` kept: ``l == p``, or every ``l >= p`` with ``depth="full"``.
      observed: per recurrent layer ``p``, the layer whose influence its gradient reads.
      filters: per recurrent layer ``p``, the leaky layers whose scalar leak filters its observed trace.
      neuron_major: whether compact own traces keep the batch second (no dense level reads them).
      feedback: ``"symmetric"`` or ``"matrix"`` (a random feedback matrix replaces ``W_out^T``).
      reg: whether the firing-rate regulariser's sums are carried.
      carry_bytes: the model's carry for one example, in bytes (in the dtype of ``model.init``).
      top_params: the number of parameters of a readout that is not a neuron cell, else 0.
      self_recurrent: whether each recurrent neuron's own explicit edge (its autapse) is part of its
        implicit recurrence ``D`` (SnAp-1); its state variables are then neither leaky nor shared.
    """

    order: int
    depth: str
    layers: tuple
    pairs: tuple
    observed: tuple
    filters: tuple
    neuron_major: bool
    feedback: str
    reg: bool
    carry_bytes: int
    top_params: int
    self_recurrent: bool = False

    def __repr__(self) -> str:
        def layer(i, d):
            if d is None:
                return f"  layer {i}: not a neuron cell (differentiated at the same step)"
            leaky = [c for c, leak in enumerate(d.leaks) if leak is not None]
            role = " (a scalar filter)" if d.scalar is not None else ""
            return f"  layer {i}: n={d.n} s={d.s} k={d.k} m={d.m} leaky={leaky} stored={d.kept}{role}"

        head = (
            f"TracePlan(order={self.order}, depth={self.depth!r}, feedback={self.feedback!r}, reg={self.reg}, "
            f"self_recurrent={self.self_recurrent}, neuron_major={self.neuron_major},"
        )
        tail = f"  pairs={self.pairs}, observed={self.observed}, filters={self.filters})"
        return "\n".join([head] + [layer(i, d) for i, d in enumerate(self.layers)] + [tail])

    @property
    def R(self) -> int:
        """The readout's index: layers ``0 .. R - 1`` are recurrent."""
        return len(self.layers) - 1

    @property
    def levels(self) -> int:
        return self.order + 1

    @property
    def top(self) -> LayerPlan | None:
        """The readout's plan, ``None`` when it is not a neuron cell."""
        return self.layers[-1]

    @property
    def filter_top(self) -> bool:
        """Whether the readout is one leaky variable, whose leak filters the traces below it."""
        return self.top is not None and self.top.scalar is not None

    @property
    def gathered(self) -> bool:
        """Whether some layer keeps its per-synapse arrays in the gathered layout (:func:`gathered_layout`)."""
        return any(d is not None and d.pre is not None for d in self.layers)

    @property
    def gated(self) -> bool:
        """Whether some recurrent layer has several synaptic entries per neuron (``k > 1``: a GRU's or an
        LSTM's gates): these networks run the chunked view by default (:data:`~eproptax.DEFAULT_CHUNK`)."""
        return any(d.k > 1 for d in self.layers[: self.R])

    @staticmethod
    def own(l: int, p: int, n: int) -> bool:
        """Whether level ``n`` of ``(l, p)`` is a layer's own level-0 trace (compact), not a dense level."""
        return l == p and n == 0

    def compact_sum(self, l: int, p: int) -> bool:
        """Whether the z-space sum over the levels of ``(l, p)`` is compact: a lone own level."""
        return l == p and self.order == 0

    def batch_axis(self, is_compact: bool) -> int:
        """Where an array keeps its batch: second for a compact array in the neuron-major layout, else first."""
        return 1 if is_compact and self.neuron_major else 0

    def stage_leaks(self, p: int) -> tuple:
        """``(decay, gain)`` of each filter stage of layer ``p``'s observed trace, bottom to top."""
        return tuple(self.layers[l].scalar for l in self.filters[p])

    def cost(self, batch_size: int, itemsize: int = 4) -> StepCost:
        """The least work of one step over ``batch_size`` examples, traces in ``itemsize``-byte floats."""
        shapes = jax.tree_util.tree_leaves(state_shapes(self, batch_size), is_leaf=is_shape)
        floats = sum(math.prod(shape) for shape in shapes) + self.top_params + 1  # + the loss
        state = batch_size * self.carry_bytes + itemsize * floats + 4  # + the int32 step counter
        return StepCost(state, 2 * state, _dense_flops(self, batch_size))


def is_shape(x) -> bool:
    """Whether ``x`` is an array's shape (a non-empty tuple of ints), a leaf of :class:`StateShapes`."""
    return isinstance(x, tuple) and len(x) > 0 and all(isinstance(e, int) for e in x)


def _dense_flops(plan: TracePlan, batch: int) -> float:
    """A dense level pushed from a dense source through a synapse of ``k_l`` gates from ``n_src`` neurons is a
    product, ``2 B n_l k_l P n_src`` for ``P`` columns; pushed from a compact own trace it is elementwise."""
    flops = 0.0
    for l, p in plan.pairs:
        dl, columns = plan.layers[l], math.prod(plan.layers[p].shape)
        for n in range(plan.levels):
            if plan.own(l, p, n):
                continue
            if n >= 1 and not plan.own(l, p, n - 1):  # the explicit edge, from level n - 1
                flops += 2.0 * batch * dl.n * dl.k * columns * dl.n
            if l > p and not plan.own(l - 1, p, n):  # the same-step edge from the layer below
                flops += 2.0 * batch * dl.n * dl.k * columns * plan.layers[l - 1].n
    return flops


class StateShapes(NamedTuple):
    """The shapes of the arrays of an online state that the plan decides (over a batch)."""

    traces: EpropTraces  # every level, filter stage and the readout's own trace
    grads: tuple  # the gradient accumulators of the neuron layers (another readout's follows its parameters)
    reg_traces: dict | None  # the regulariser's sums, or None without it
    spikes: tuple | None  # the regulariser's per-example spike sums, or None


def state_shapes(plan: TracePlan, batch: int) -> StateShapes:
    """The shapes of every trace, filter stage, gradient accumulator and regulariser sum over ``batch``
    examples: what ``init`` allocates and :meth:`TracePlan.cost` counts."""
    batched = lambda shape, axis: shape[:axis] + (batch,) + shape[axis:]

    def level(l, p, n):  # an own level: a tuple over the stored variables; a dense level: one array
        dp = plan.layers[p]
        if plan.own(l, p, n):
            return tuple(
                batched((dp.m,), 0) if leak is not None else batched(dp.compact_shape, plan.batch_axis(True))
                for leak, kept in zip(dp.leaks, dp.stored)
                if kept
            )
        return batched((plan.layers[l].n, plan.layers[l].s) + dp.shape, 0)

    def z_sum(l, p):  # a z-space sum over levels: compact, or dense over layer l's neurons
        shape = plan.layers[p].shape if plan.compact_sum(l, p) else (plan.layers[l].n,) + plan.layers[p].shape
        return batched(shape, plan.batch_axis(plan.compact_sum(l, p)))

    R = plan.R
    influence = {(l, p): tuple(level(l, p, n) for n in range(plan.levels)) for l, p in plan.pairs}
    filtered = {p: tuple(z_sum(plan.observed[p], p) for _ in plan.filters[p]) for p in range(R) if plan.filters[p]}
    readout = level(R, R, 0) if plan.top is not None else ()
    grads = tuple(d.shape for d in plan.layers if d is not None)
    reg = {(l, p): z_sum(l, p) for l, p in plan.pairs} if plan.reg else None
    spikes = (batch, sum(d.n for d in plan.layers[:R])) if plan.reg else None
    return StateShapes(EpropTraces(influence, filtered, readout), grads, reg, spikes)


def batch_axes(plan: TracePlan) -> tuple:
    """The batch axes of the traces and of the regulariser's sums, as prefix trees of those of the state."""
    own_axes = lambda l: tuple(
        plan.batch_axis(leak is None) for leak, kept in zip(plan.layers[l].leaks, plan.layers[l].stored) if kept
    )
    influence = {
        (l, p): tuple(own_axes(p) if plan.own(l, p, n) else 0 for n in range(plan.levels)) for l, p in plan.pairs
    }
    filtered = {p: plan.batch_axis(plan.compact_sum(plan.observed[p], p)) for p in range(plan.R) if plan.filters[p]}
    readout = own_axes(plan.R) if plan.top is not None else 0
    reg = {key: plan.batch_axis(plan.compact_sum(*key)) for key in plan.pairs} if plan.reg else 0
    return EpropTraces(influence, filtered, readout), reg


def layer_plan(layer: Cell, params, dtype, order: int, self_recurrent: bool = False) -> LayerPlan | None:
    """A neuron layer's :class:`LayerPlan` (``params`` may be shapes), ``None`` for any other cell.

    Only a level-0 update reads the previous own trace, through ``D``; a variable that ``dynamics`` never
    reads (found from its jaxpr: an LSTM's ``h``) has a zero column there, so with ``order=0`` its trace is
    recomputed every step and never stored. Dense levels read the previous trace of every variable, and so
    does a ``D`` that holds the autapse's edge (``self_recurrent``, which also makes no variable leaky:
    ``D`` then differs from neuron to neuron)."""
    if not is_neuron(layer):
        return None
    carry = jax.eval_shape(layer.init_carry, params)
    s = sum(1 for leaf in jax.tree_util.tree_leaves(carry) if jnp.issubdtype(leaf.dtype, jnp.inexact))
    a = synapse_struct(layer, params, dtype)
    if a.ndim != 2 or a.shape[0] != layer.n_out:
        raise ValueError(f"synapse must return shape (n={layer.n_out}, k), got {a.shape}.")
    leaks = variable_leaks(layer, s, a.shape[1])
    if self_recurrent:
        m = layer.n_in + layer.n_out + 1
        return LayerPlan(layer.n_out, s, a.shape[1], m, (None,) * s, (True,) * s, None)
    read = (True,) * s if all(leaks) else read_states(layer, carry, a)
    read = tuple(r or leak is not None for r, leak in zip(read, leaks))  # a leaky variable reads itself
    stored = read if order == 0 else (True,) * s
    return LayerPlan(layer.n_out, s, a.shape[1], layer.n_in + layer.n_out + 1, leaks, stored, scalar_leak(layer))


def make_plan(
    model: Cell,
    *,
    order: int,
    depth: str,
    feedback,
    reg: bool,
    where: str,
    self_recurrent: bool = False,
    gather: bool = False,
) -> TracePlan:
    """Validates a rule's static configuration and resolves its :class:`TracePlan`; with ``gather`` (the
    e-prop family), a sparse recurrent layer keeps its per-synapse arrays, its own traces and the dense
    levels of the parameters it holds, in the gathered layout."""
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"{where}: `order` must be a non-negative Python int, got {order!r}.")
    if depth not in ("spatial", "collapsed", "full"):
        raise ValueError(f"{where}: `depth` must be 'spatial', 'collapsed' or 'full', got {depth!r}.")
    check_model(where, model, feedback)
    check_cell(where, model, "neuron")
    layers = layers_of(model)
    params = jax.eval_shape(model.init, jax.random.key(0))
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    R = len(layers) - 1
    plans = tuple(
        layer_plan(layer, p, dtype, order, self_recurrent and i < R) for i, (layer, p) in enumerate(zip(layers, params))
    )
    if gather:
        plans = tuple(
            gathered_layout(d, layer, p, dtype) if i < R else d
            for i, (d, layer, p) in enumerate(zip(plans, layers, params))
        )
    full = depth == "full"
    filter_top = plans[R] is not None and plans[R].scalar is not None

    def filters(p):  # the leaky layers whose scalar leak filters the trace observed for p, bottom to top
        if depth == "collapsed":
            return tuple(l for l in range(p + 1, R + 1) if plans[l] is not None and plans[l].scalar is not None)
        return (R,) if filter_top else ()

    carry = jax.eval_shape(model.init_carry, params)
    return TracePlan(
        order=int(order),
        depth=depth,
        layers=plans,
        pairs=tuple((l, p) for l in range(R) for p in range(R) if (p <= l if full else l == p)),
        observed=tuple(R - 1 if full else p for p in range(R)),
        filters=tuple(filters(p) for p in range(R)),
        neuron_major=order == 0 and not full,
        feedback="symmetric" if isinstance(feedback, str) else "matrix",
        reg=bool(reg),
        carry_bytes=sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(carry)),
        top_params=0 if plans[R] is not None else sum(leaf.size for leaf in jax.tree_util.tree_leaves(params[R])),
        self_recurrent=self_recurrent,
    )


SPARSE_FRACTION = 0.5
"""A recurrent layer runs the gathered layout when its widest neuron has at most this fraction of the ``m``
presynaptic values as synapses: below it, gathering ``v`` per neuron costs less than the absent synapses'
traces (docs/cells.md, "What is stored")."""


def sparse_columns(layer: Cell, params, dtype, m: int) -> tuple | None:
    """``(pre, valid)``, the presynaptic entries each neuron of a sparse layer keeps, or ``None`` for the
    dense ``m`` columns: a cell that stores its weights per synapse (``Cell.synapses``) gives its own table
    (traced or not, whatever its density, ``valid`` ``None``); otherwise where the layer's synapses are sparse
    enough (:data:`SPARSE_FRACTION`), each neuron's ``K`` entries its effective weights can be nonzero at (the
    pattern read at random parameters, :func:`~eproptax._jacobians.synapse_pattern`; a traced pattern, a cell
    built inside ``jax.vmap``, keeps the dense columns), padded to the widest neuron (``valid`` ``False`` on
    padding, ``None`` without)."""
    if layer.synapses is not None:
        return jnp.asarray(layer.synapses[0], jnp.int32), None
    pattern = synapse_pattern(layer, params, dtype)
    if pattern is None:
        return None
    K = int(pattern.sum(1).max())
    if K > SPARSE_FRACTION * m:
        return None
    pre = np.argsort(~pattern, axis=1, kind="stable")[:, :K]  # each neuron's synapses first, in order
    valid = np.take_along_axis(pattern, pre, 1)
    return pre, None if valid.all() else valid


def gathered_layout(d: LayerPlan | None, layer: Cell, params, dtype) -> LayerPlan | None:
    """``d`` in the gathered layout where the layer is sparse (:func:`sparse_columns`), else ``d``."""
    columns = None if d is None else sparse_columns(layer, params, dtype, d.m)
    return d if columns is None else d._replace(pre=columns[0], valid=columns[1])


def same_step_plan(model: Cell, *, feedback, reg: bool, where: str) -> TracePlan:
    """The plan of a rule that keeps its own per-layer factors on e-prop's machinery (``pp_prop``,
    ``kf_rtrl``): e-prop's (order 0, spatial) with every array batch first and, under a leaky readout, the
    same-step learning signal ``d loss_t / d z_t`` (no filter: a factored trace cannot carry the readout's
    leak). The readout keeps its own exact trace."""
    plan = make_plan(model, order=0, depth="spatial", feedback=feedback, reg=reg, where=where)
    if plan.filter_top:
        plan = plan._replace(layers=plan.layers[:-1] + (plan.top._replace(scalar=None),), filters=((),) * plan.R)
    return plan._replace(neuron_major=False)


def check_model(where: str, model: Cell, feedback) -> None:
    """Static checks shared by the e-prop family, run when the rule is built."""
    layers = layers_of(model)
    if len(layers) < 2:
        raise ValueError(
            f"{where}: `model` must be a stack of recurrent layers and a readout, e.g. "
            "ep.cells.stack(ep.cells.lif(n_in, n), ep.cells.leaky_readout(n, n_out)); got a single cell."
        )
    for i, layer in enumerate(layers[:-1]):
        if not is_neuron(layer):
            raise ValueError(
                f"{where}: recurrent layer {i} does not expose synapse/dynamics/output; build it "
                "with ep.cells.make_cell, or use ep.bptt / ep.rtrl, which work on any cell."
            )
    top = layers[-1]
    if not is_neuron(top):
        carry = jax.eval_shape(lambda: top.init_carry(top.init(jax.random.key(0))))
        if jax.tree_util.tree_leaves(carry):
            raise ValueError(
                f"{where}: the readout (top layer) has a state but no synapse/dynamics/output split; "
                "a readout without the split must be stateless (init_carry returns ())."
            )
    if not (isinstance(feedback, str) and feedback == "symmetric"):
        if isinstance(feedback, str):
            raise ValueError(
                f"{where}: `feedback` must be 'symmetric' or a feedback matrix B of shape "
                f"(n_rec={layers[-2].n_out}, n_out={top.n_out}), got {feedback!r}."
            )
        shape = tuple(np.shape(feedback))
        if shape != (layers[-2].n_out, top.n_out):
            raise ValueError(
                f"{where}: `feedback` matrix B must have shape (n_rec={layers[-2].n_out}, "
                f"n_out={top.n_out}) (it takes the place of W_out^T), got {shape}."
            )
