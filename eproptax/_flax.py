"""Adapters from flax's recurrent cells (linen and nnx) to cells of this library, same parameter tree.

A flax ``SimpleCell``, ``LSTMCell``, ``OptimizedLSTMCell`` or ``GRUCell`` with its default gate and
activation functions becomes a *neuron* cell (the synapse / dynamics / output split of
:func:`~eproptax.cells.make_cell`): every rule works on it, e-prop included. Its synaptic stage reads
flax's own parameter tree, so ``params`` (and ``grads``) are exactly flax's ``params`` collection (linen)
or the module's ``nnx.Param`` state as a pure dict (nnx); the neuron-wise dynamics are those of
:func:`~eproptax.cells.rnn`, :func:`~eproptax.cells.lstm` and :func:`~eproptax.cells.gru`.

Any other cell (a subclass, a custom ``gate_fn`` or ``activation_fn``, a computation ``dtype`` other than
the parameters' one, a cell of your own) becomes an *opaque* cell wrapping flax's own ``apply``: ``bptt``
and ``rtrl`` work on it; the e-prop family needs the split and says so.

flax is an optional dependency (``pip install eproptax[flax]``); it is imported when an adapter is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._cell import Cell, make_cell
from .cells._classic import GRUState, LSTMState, RNNState, gru, lstm, rnn


def _import(what: str):
    try:
        if what == "linen":
            from flax import linen

            return linen
        from flax import nnx

        return nnx
    except ImportError as e:  # pragma: no cover - exercised only without flax
        raise ImportError(
            f"eproptax.cells.from_{'flax' if what == 'linen' else 'nnx'} needs flax: "
            "pip install 'eproptax[flax]' (or pip install flax)."
        ) from e


def _float_dtype(params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def _cast_floats(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a, tree)


# ----------------------------------------------------------------------------------------------------------
# Layouts: flax's parameter trees -> the tree of this library's rnn / lstm / gru (linear maps)
# ----------------------------------------------------------------------------------------------------------


def _simple(i, h):
    """``SimpleCell``: the bias sits on the input kernel in flax, on the recurrent one in ``ep.cells.rnn``."""
    return lambda p: {"i": {"kernel": p[i]["kernel"]}, "h": {"kernel": p[h]["kernel"], "bias": p[i]["bias"]}}


def _split(kernel, parts):
    return jnp.split(kernel, parts, axis=-1)


def _lstm_nnx(p):
    return {("i" + g): {"kernel": p["if_" if g == "f" else "i" + g]["kernel"]} for g in "ifgo"} | {
        ("h" + g): p["h" + g] for g in "ifgo"
    }


def _lstm_fused(p):
    """nnx ``OptimizedLSTMCell``: one fused kernel per side, gates ``i, f, g, o`` along the last axis."""
    ki, kh, bh = _split(p["dense_i"]["kernel"], 4), _split(p["dense_h"]["kernel"], 4), _split(p["dense_h"]["bias"], 4)
    out = {}
    for idx, g in enumerate("ifgo"):
        out["i" + g] = {"kernel": ki[idx]}
        out["h" + g] = {"kernel": kh[idx], "bias": bh[idx]}
    return out


def _gru_fused(p):
    """nnx ``GRUCell``: fused kernels ``r, z, n``; the recurrent side has no bias (``b_hn = 0``)."""
    ki, bi, kh = _split(p["dense_i"]["kernel"], 3), _split(p["dense_i"]["bias"], 3), _split(p["dense_h"]["kernel"], 3)
    out = {("i" + g): {"kernel": ki[idx], "bias": bi[idx]} for idx, g in enumerate("rzn")}
    out.update({("h" + g): {"kernel": kh[idx]} for idx, g in enumerate("rz")})
    out["hn"] = {"kernel": kh[2], "bias": jnp.zeros(kh[2].shape[-1], kh[2].dtype)}
    return out


def _neuron(base: Cell, to_base: Callable | None, init, init_carry, residual: bool = False) -> Cell:
    """``base``'s dynamics and output on a synaptic stage that reads flax's tree through ``to_base``."""
    synapse = base.synapse if to_base is None else (lambda p, x, z: base.synapse(to_base(p), x, z))
    dynamics = base.dynamics
    if residual:  # SimpleCell(residual=True): h = tanh(a + h_prev), an implicit recurrence
        dynamics = lambda h, a: base.dynamics(h, a + h.h[:, None].astype(a.dtype))
    return make_cell(
        n_in=base.n_in,
        n_out=base.n_out,
        init=init,
        init_carry=init_carry,
        synapse=synapse,
        dynamics=dynamics,
        output=base.output,
        leak=base.leak,
    )


def _state(kind: str, carry):
    """flax's carry -> this library's named state (flax's LSTM carry is ``(c, h)``, as ``LSTMState``)."""
    return LSTMState(*carry) if kind == "lstm" else (RNNState(carry) if kind == "rnn" else GRUState(carry))


# ----------------------------------------------------------------------------------------------------------
# linen
# ----------------------------------------------------------------------------------------------------------


def _linen_defaults(cell, names) -> bool:
    fields = type(cell).__dataclass_fields__
    return all(getattr(cell, name) is fields[name].default for name in names)


def from_flax(flax_cell: Any, n_in: int, *, opaque: bool = False) -> Cell:
    """Turns a flax linen recurrent cell into a :class:`~eproptax.Cell` with flax's parameter tree.

    ``cell.init(key)`` returns ``flax_cell.init(key, carry, x)["params"]``, so ``params`` and every rule's
    ``grads`` have exactly the tree of flax's ``params`` collection: existing flax parameters plug in as
    they are (``params = variables["params"]``) and the gradient goes back into
    ``{"params": new_params}``. ``cell.apply(params, carry, x)`` computes what
    ``flax_cell.apply({"params": params}, carry, x)`` computes.

    * ``nn.SimpleCell`` (``residual`` or not), ``nn.LSTMCell``, ``nn.OptimizedLSTMCell`` and ``nn.GRUCell``
      with their default ``gate_fn`` / ``activation_fn`` and no computation ``dtype`` other than
      ``param_dtype`` become neuron cells (the dynamics of :func:`rnn`, :func:`lstm`, :func:`gru`): every
      rule works, e-prop included. Their carry is the library's named state: ``LSTMState(c, h)`` (flax's
      LSTM carry is the tuple ``(c, h)``: ``LSTMState(*flax_carry)``), ``RNNState(h)``, ``GRUState(h)``.
    * Any other cell (a subclass, a custom activation, ``MGUCell``, your own ``RNNCellBase``) becomes an
      opaque cell around ``flax_cell.apply`` with flax's own carry: ``ep.bptt`` and ``ep.rtrl`` work on
      it; the e-prop family raises, since it needs the synapse / dynamics split (write the cell with
      :func:`make_cell` for that).

    The initial carry is ``flax_cell.initialize_carry(jax.random.key(0), (n_in,))`` (zeros with flax's
    default ``carry_init``), cast to the parameters' dtype.

    Args:
      flax_cell: a ``flax.linen`` recurrent cell (an ``nn.RNNCellBase`` instance, unbound).
      n_in: the input width (flax infers it at ``init``; the library's cells declare it).
      opaque: always wrap ``flax_cell.apply``, even for a known cell (for comparisons).

    Returns:
      A :class:`~eproptax.Cell` with ``n_in`` and ``n_out`` set.

    Example::

      from flax import linen as nn
      cell = ep.cells.from_flax(nn.LSTMCell(features=32), n_in=8)
      model = ep.cells.stack(cell, ep.cells.readout(32, 2))
      params = model.init(key)                 # (flax_params, readout_params)
      loss_value, grads = ep.eprop(model, loss)(params, inputs, targets)
      # grads[0] has the tree of nn.LSTMCell's "params": {"ii": {"kernel"}, ..., "hi": {"kernel", "bias"}}
    """
    nn = _import("linen")
    if not isinstance(n_in, int) or n_in < 1:
        raise ValueError(f"from_flax: `n_in` must be a positive int (the input width), got {n_in!r}.")
    if not isinstance(flax_cell, nn.Module):
        raise TypeError(
            f"from_flax: expected a flax.linen recurrent cell (e.g. nn.LSTMCell(features=n)), got "
            f"{type(flax_cell).__name__}; for an nnx module use ep.cells.from_nnx."
        )
    key0 = jax.random.key(0)

    def init(key):
        carry = flax_cell.initialize_carry(key0, (n_in,))
        x = jnp.zeros((n_in,), jax.tree_util.tree_leaves(carry)[0].dtype)
        return flax_cell.init(key, carry, x)["params"]

    def flax_carry(params):
        return _cast_floats(flax_cell.initialize_carry(key0, (n_in,)), _float_dtype(params))

    kinds = {
        nn.SimpleCell: ("rnn", ("activation_fn",)),
        nn.LSTMCell: ("lstm", ("gate_fn", "activation_fn")),
        nn.OptimizedLSTMCell: ("lstm", ("gate_fn", "activation_fn")),
        nn.GRUCell: ("gru", ("gate_fn", "activation_fn")),
    }
    kind, fns = kinds.get(type(flax_cell), (None, ()))
    same_dtype = (
        flax_cell.dtype is None or jnp.dtype(flax_cell.dtype) == jnp.dtype(flax_cell.param_dtype) if kind else False
    )
    if kind and not opaque and same_dtype and _linen_defaults(flax_cell, fns):
        n = flax_cell.features
        init_carry = lambda params: _state(kind, flax_carry(params))
        if kind == "rnn":
            return _neuron(rnn(n_in, n), _simple("i", "h"), init, init_carry, flax_cell.residual)
        return _neuron((lstm if kind == "lstm" else gru)(n_in, n), None, init, init_carry)

    def apply(params, carry, x):
        return flax_cell.apply({"params": params}, carry, x)

    n_out = _opaque_width("from_flax", init, flax_carry, apply, n_in)
    return Cell(init, flax_carry, apply, n_in=n_in, n_out=n_out)


def _opaque_width(where, init, init_carry, apply, n_in) -> int:
    def out(key):
        params = init(key)
        x = jnp.zeros((n_in,), _float_dtype(params))
        return apply(params, init_carry(params), x)[1]

    shape = jax.eval_shape(out, jax.random.key(0)).shape
    if len(shape) != 1:
        raise ValueError(f"{where}: the cell's output for one example must have shape (n_out,), got {shape}.")
    return shape[0]


# ----------------------------------------------------------------------------------------------------------
# nnx
# ----------------------------------------------------------------------------------------------------------


def _nnx_defaults(module, names) -> bool:
    sig = inspect.signature(type(module).__init__).parameters
    return all(getattr(module, name) is sig[name].default for name in names)


def from_nnx(module: Any) -> tuple[Cell, Any]:
    """Turns a flax nnx recurrent cell into a :class:`~eproptax.Cell` and its parameters.

    nnx modules own their parameters, so this returns both: ``params`` is the module's ``nnx.Param`` state
    as a pure dict (``nnx.to_pure_dict(nnx.state(module, nnx.Param))``), the tree every rule's ``grads``
    then has. To write trained parameters back into the module::

      state = nnx.state(module, nnx.Param)
      nnx.replace_by_pure_dict(state, new_params)
      nnx.update(module, state)

    ``nnx.SimpleCell``, ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell`` and ``nnx.GRUCell`` with their default
    ``gate_fn`` / ``activation_fn`` / ``promote_dtype`` and no computation ``dtype`` other than
    ``param_dtype`` become neuron cells (every rule works, e-prop included; their fused or renamed kernels,
    such as ``if_`` or ``GRUCell``'s ``dense_i`` of width ``3 n``, are read as they are). Any other module
    becomes an opaque cell around ``nnx.merge(graphdef, params, rest)(carry, x)``: ``bptt`` and ``rtrl``
    work on it, the e-prop family raises. The carry is as in :func:`from_flax`.

    ``cell.init(key)`` returns the module's parameters as they were when converted (an nnx module is
    initialised when it is built; the key is ignored): to draw new ones, build a new module with
    ``rngs=nnx.Rngs(key)`` and convert it.

    Args:
      module: an nnx recurrent cell (``nnx.RNNCellBase`` instance) with ``in_features`` and
        ``hidden_features``.

    Returns:
      ``(cell, params)``.

    Example::

      from flax import nnx
      cell, params = ep.cells.from_nnx(nnx.GRUCell(8, 32, rngs=nnx.Rngs(0)))
      model = ep.cells.stack(cell, ep.cells.readout(32, 2))
      params = (params, model.layers[1].init(key))
    """
    nnx = _import("nnx")
    if not isinstance(module, nnx.Module):
        raise TypeError(
            f"from_nnx: expected a flax.nnx recurrent cell (e.g. nnx.LSTMCell(n_in, n, rngs=...)), "
            f"got {type(module).__name__}; for a linen cell use ep.cells.from_flax."
        )
    for attr in ("in_features", "hidden_features"):
        if not hasattr(module, attr):
            raise ValueError(
                f"from_nnx: the module must have `{attr}` (as nnx's RNN cells do); {type(module).__name__} has not."
            )
    n_in, n = module.in_features, module.hidden_features
    graphdef, state, rest = nnx.split(module, nnx.Param, ...)
    params = nnx.to_pure_dict(state)
    frozen = jax.tree_util.tree_map(jnp.asarray, params)

    def init(key):
        del key
        return frozen

    def flax_carry(params):
        return _cast_floats(module.initialize_carry((n_in,), rngs=nnx.Rngs(0)), _float_dtype(params))

    kinds = {
        nnx.SimpleCell: ("rnn", ("activation_fn", "promote_dtype")),
        nnx.LSTMCell: ("lstm", ("gate_fn", "activation_fn", "promote_dtype")),
        nnx.OptimizedLSTMCell: ("lstm", ("gate_fn", "activation_fn", "promote_dtype")),
        nnx.GRUCell: ("gru", ("gate_fn", "activation_fn", "promote_dtype")),
    }
    kind, fns = kinds.get(type(module), (None, ()))
    same_dtype = module.dtype is None or jnp.dtype(module.dtype) == jnp.dtype(module.param_dtype) if kind else False
    if kind and same_dtype and _nnx_defaults(module, fns):
        init_carry = lambda params: _state(kind, flax_carry(params))
        if kind == "rnn":
            return _neuron(rnn(n_in, n), _simple("dense_i", "dense_h"), init, init_carry, module.residual), params
        if kind == "gru":
            return _neuron(gru(n_in, n), _gru_fused, init, init_carry), params
        fused = type(module) is nnx.OptimizedLSTMCell
        return _neuron(lstm(n_in, n), _lstm_fused if fused else _lstm_nnx, init, init_carry), params

    def apply(params, carry, x):
        st = jax.tree_util.tree_map(lambda v: v, state)
        nnx.replace_by_pure_dict(st, params)
        return nnx.merge(graphdef, st, rest)(carry, x)

    n_out = _opaque_width("from_nnx", init, flax_carry, apply, n_in)
    return Cell(init, flax_carry, apply, n_in=n_in, n_out=n_out), params
