"""Validation of a rule's arguments: every message names the argument, what was expected and what was received.

Static configuration is checked when a rule is built; shapes of ``params``, ``inputs``, ``targets`` and the
loss's output once per trace, with ``jax.eval_shape`` (nothing is run).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._cell import Cell
from ._typing import Array, LossFn, Params


def _shape_str(x) -> str:
    return str(tuple(np.shape(x)))


def check_unroll(where: str, unroll) -> None:
    if unroll is not None and (isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1):
        raise ValueError(
            f"{where}: `unroll` must be a positive int (time steps per iteration of the scan) "
            f"or None (the platform's default), got {unroll!r}."
        )


def float_dtype(where: str, params: Params):
    """The parameters' floating dtype, the one every rule computes in; mixed floating dtypes are an error."""
    floats = [
        (jax.tree_util.keystr(path), jnp.result_type(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    if not floats:
        raise ValueError(f"{where}: `params` has no floating leaf; make params with model.init(key).")
    first = {}
    for name, dtype in floats:
        first.setdefault(dtype, name or "(root)")
    if len(first) > 1:
        listed = ", ".join(f"params{name} is {dtype}" for dtype, name in first.items())
        raise ValueError(
            f"{where}: `params` mixes floating dtypes ({listed}); every rule computes in one dtype: cast them "
            "with jax.tree_util.tree_map(lambda p: p.astype(dtype), params) or build the cells with one `dtype`."
        )
    return floats[0][1]


def cast_data(dtype, inputs: Array, targets: Any) -> tuple[Array, Any]:
    """The dtype policy: ``inputs`` in the parameters' ``dtype``, the floating leaves of ``targets`` in it too but
    at least float32 (the loss of a bfloat16 network is computed in float32; integer targets, such as labels,
    are kept)."""
    inputs = jnp.asarray(inputs)
    inputs = inputs if inputs.dtype == dtype else inputs.astype(dtype)
    wide = dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
    cast = lambda a: a.astype(wide) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a
    return inputs, jax.tree_util.tree_map(cast, targets)


def check_params(where: str, model: Cell, params: Params):
    """``params`` has the tree and shapes of ``model.init``'s, in one floating dtype, which it returns."""
    expected = jax.eval_shape(model.init, jax.random.key(0))
    exp_def, got_def = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(params)
    if exp_def != got_def:
        raise ValueError(
            f"{where}: `params` does not match the model: expected the tree {exp_def}, got "
            f"{got_def}. Make params with model.init(key)."
        )
    for path, (e, g) in zip(
        jax.tree_util.tree_flatten_with_path(expected)[0],
        zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(params)),
    ):
        if tuple(e.shape) != tuple(np.shape(g)):
            raise ValueError(
                f"{where}: `params` leaf {jax.tree_util.keystr(path[0])} has shape "
                f"{_shape_str(g)}, expected {tuple(e.shape)}."
            )
    return float_dtype(where, params)


def check_inputs(where: str, model: Cell, loss: LossFn, params: Params, inputs: Array, targets: Any):
    """Validates a whole-sequence call (shapes are static, so this runs once per trace); returns ``(inputs,
    targets)`` in the parameters' dtype (:func:`cast_data`)."""
    dtype = check_params(where, model, params)
    if np.ndim(inputs) != 3:
        raise ValueError(
            f"{where}: `inputs` must have shape (batch, time, n_in={model.n_in}), got "
            f"{_shape_str(inputs)}. Add a batch axis with inputs[None] or a time axis with "
            "inputs[:, None]."
        )
    batch, time, width = np.shape(inputs)
    if model.n_in is not None and width != model.n_in:
        raise ValueError(
            f"{where}: `inputs` must have n_in={model.n_in} features on its last axis, got shape {_shape_str(inputs)}."
        )
    if batch == 0 or time == 0:
        raise ValueError(
            f"{where}: `inputs` must hold at least one sequence of at least one step, got shape "
            f"{_shape_str(inputs)} (batch={batch}, time={time})."
        )
    for path, leaf in jax.tree_util.tree_flatten_with_path(targets)[0]:
        if np.ndim(leaf) < 2 or tuple(np.shape(leaf)[:2]) != (batch, time):
            raise ValueError(
                f"{where}: `targets` leaf {jax.tree_util.keystr(path) or '(root)'} must have "
                f"leading axes (batch, time) = ({batch}, {time}) like `inputs`, got shape "
                f"{_shape_str(leaf)}."
            )
    inputs, targets = cast_data(dtype, inputs, targets)
    check_loss(where, model, loss, params, jax.tree_util.tree_map(lambda a: a[0, 0], targets))
    return inputs, targets


def check_step(where: str, model: Cell, loss: LossFn, params: Params, state: Any, x: Array, target: Any):
    """Validates an online step as :func:`check_inputs` does a sequence; returns ``(inputs_t, targets_t)``
    in the parameters' dtype."""
    dtype = check_params(where, model, params)
    batch = jax.tree_util.tree_leaves(state.carry)[0].shape[0] if jax.tree_util.tree_leaves(state.carry) else None
    if np.ndim(x) != 2 or np.shape(x)[-1] != model.n_in or (batch is not None and np.shape(x)[0] != batch):
        raise ValueError(
            f"{where}: `inputs_t` must have shape (batch={batch}, n_in={model.n_in}), got {_shape_str(x)}."
        )
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        if np.ndim(leaf) < 1 or np.shape(leaf)[0] != np.shape(x)[0]:
            raise ValueError(
                f"{where}: `targets_t` leaf {jax.tree_util.keystr(path) or '(root)'} must have a "
                f"leading batch axis of {np.shape(x)[0]}, got shape {_shape_str(leaf)}."
            )
    x, target = cast_data(dtype, x, target)
    check_loss(where, model, loss, params, jax.tree_util.tree_map(lambda a: a[0], target))
    return x, target


def check_loss(where: str, model: Cell, loss: LossFn, params: Params, target_t: Any) -> None:
    """``loss(outputs_t, targets_t)`` runs on one step's shapes and returns a floating scalar; a failure inside
    it is reported as a mismatch of ``targets`` and the model's output."""
    dtype = float_dtype(where, params)

    out = jax.eval_shape(lambda p: model.apply(p, model.init_carry(p), jnp.zeros((model.n_in,), dtype))[1], params)
    try:
        value = jax.eval_shape(loss, out, target_t)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        shapes = jax.tree_util.tree_map(lambda a: f"{jnp.result_type(a)}{list(np.shape(a))}", target_t)
        raise ValueError(
            f"{where}: `loss(outputs_t, targets_t)` fails on one step of one example, outputs_t of shape "
            f"(n_out={model.n_out},) and `targets` at one step {shapes}: {type(e).__name__}: "
            f"{str(e).splitlines()[0].rstrip('.') if str(e) else ''}. Check that `targets` match the model's output "
            "and the loss."
        ) from e
    if value.shape != ():
        raise ValueError(
            f"{where}: `loss(outputs_t, targets_t)` must return a scalar for one example and one "
            f"step, got shape {tuple(value.shape)}. Sum or average inside the loss."
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{where}: `loss(outputs_t, targets_t)` must return a floating scalar, got {value.dtype}.")


def check_key(where: str, key) -> None:
    """A single key for a rule that draws random signs at every step (``uoro``, ``kf_rtrl``): a typed
    ``jax.random.key``, or a raw ``uint32`` one (``jax.random.PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    if not ((typed and jnp.ndim(key) == 0) or (not typed and dtype == jnp.uint32 and jnp.ndim(key) == 1)):
        got = f"{dtype}{list(jnp.shape(key))}" if dtype is not None else repr(key)
        raise ValueError(
            f"{where}: `key` must be a jax.random.key ({where} draws random signs at every step): pass "
            f"init(params, batch_size, key=...) or grad_fn(params, inputs, targets, key=...); got {got}."
        )


def check_chunk_data(where: str, model: Cell, loss: LossFn, params: Params, state: Any, inputs: Array, targets: Any):
    """Validates a chunk of ``K`` steps (``inputs (B, K, n_in)``, ``targets`` leaves ``(B, K, ...)``) as
    :func:`check_step` does its first step; returns them in the parameters' dtype."""
    first = jax.tree_util.tree_map(lambda a: a[:, 0], targets)
    check_step(where, model, loss, params, state, inputs[:, 0], first)
    return cast_data(float_dtype(where, params), inputs, targets)


def check_chunk(where: str, chunk, online: Any) -> None:
    """``chunk``: a positive int or ``None``, and above 1 only for a rule with a chunked form (``online.chunk``)."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(
            f"{where}: `chunk` must be a positive int (time steps advanced at once) or None (the "
            f"platform's default), got {chunk!r}."
        )
    if chunk is not None and chunk > 1 and online.chunk is None:
        if getattr(online.plan, "gathered", False):
            raise ValueError(
                f"{where}: `chunk={chunk}` has no chunked form on a sparse layer's gathered layout (its traces "
                "are kept only where synapses exist, docs/cells.md); pass chunk=1 or None."
            )
        raise ValueError(
            f"{where}: `chunk={chunk}` needs a rule with a chunked form: level-0 traces only "
            "(order=0, depth='spatial' or 'collapsed'); pass chunk=1 or None."
        )


def check_online_rule(where: str, rule: Any) -> None:
    """An :class:`~eproptax.OnlineRule`: ``init``, ``step``, ``result`` and ``reset`` callable, ``batch_axes`` and
    ``chunk`` callable or ``None``."""
    for name in ("init", "step", "result", "reset", "batch_axes", "chunk"):
        value = getattr(rule, name)
        optional = name in ("batch_axes", "chunk")
        if not callable(value) and not (optional and value is None):
            expected = "a function or None" if optional else "a function"
            raise TypeError(
                f"{where}: `OnlineRule.{name}` must be {expected}, got {type(value).__name__} {value!r:.60}; "
                "build online rules with ep.online.* or ep.make_rule(..., online=True)."
            )
