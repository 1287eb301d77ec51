"""An opt-in finite check around any rule: which parameter, which time step, or which gradient went bad."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from ._typing import GradFn


def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _check_leaves(where: str, what: str, tree, detail: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if _inexact(leaf):
            bad = jnp.sum(~jnp.isfinite(leaf))
            checkify.check(
                bad == 0,
                f"{where}: `{what}{jax.tree_util.keystr(path)}` has {{count}} NaN or Inf entries "
                f"(shape {tuple(jnp.shape(leaf))}){detail}.",
                count=bad,
            )


def _check_sequence(where: str, what: str, leaf) -> None:
    """Reports the first time step (and the first example there) at which a ``(B, T, ...)`` leaf is not finite."""
    if not _inexact(leaf) or jnp.ndim(leaf) < 2:
        return
    bad = ~jnp.isfinite(leaf).reshape(leaf.shape[:2] + (-1,)).all(axis=-1)  # (B, T)
    t = jnp.argmax(jnp.any(bad, axis=0))
    b = jnp.argmax(bad[:, t])
    checkify.check(
        ~jnp.any(bad),
        f"{where}: `{what}` contains NaN or Inf first at time step {{t}} (example "
        f"{{b}} of the batch; steps count from 0).",
        t=t,
        b=b,
    )


def check_finite(grad_fn: GradFn, *, errors=checkify.user_checks, raise_: bool = False) -> Callable:
    """Wraps a rule so that NaN or Inf in its inputs, parameters, loss or gradient is reported, with where.

    An opt-in debugging aid built on :func:`jax.experimental.checkify`. The returned function checks, in
    this order, and reports the first failure:

    1. every floating leaf of ``params``, named by its path (``params[0]['w_rec']``) with its count of bad
       entries;
    2. ``inputs`` and every floating leaf of ``targets``: the first time step ``t`` (and the example) at
       which one is not finite, computed up front from the arrays (the rule's scan is unchanged);
    3. the loss returned by ``grad_fn``;
    4. every leaf of ``grads``, by its path.

    It works with any function of the rules' signature (``ep.bptt``, ``ep.rtrl``, ``ep.eprop``, ...). As
    with ``checkify.checkify``, the default returns ``(err, (loss, grads))`` and can be jitted; the checks
    cost a few reductions. ``errors=checkify.float_checks`` adds checkify's own NaN check on every
    operation (inside the scan too), which names the operation that first produced a NaN, at a cost.

    Args:
      grad_fn: ``grad_fn(params, inputs, targets) -> (loss, grads)``.
      errors: the checkify error set to enable in addition to these checks (``checkify.user_checks`` by
        default; ``checkify.float_checks``, ``checkify.all_checks``).
      raise_: return ``(loss, grads)`` and raise ``checkify.JaxRuntimeError`` on failure instead of
        returning ``err``. Raising needs concrete values: call it outside ``jax.jit`` (to keep the speed
        of jit, jit the default form and call ``err.throw()`` yourself).

    Returns:
      ``checked(params, inputs, targets) -> (err, (loss, grads))``, or ``-> (loss, grads)`` with
      ``raise_=True``. ``err.get()`` is ``None`` or the message; ``err.throw()`` raises it.

    Example::

      checked = jax.jit(ep.check_finite(ep.eprop(model, loss)))
      err, (loss_value, grads) = checked(params, inputs, targets)
      err.throw()  # e.g. "check_finite: `inputs` contains NaN or Inf first at time step 17 (example 2 ...)"
    """

    def checked(params, inputs, targets):
        _check_leaves("check_finite", "params", params, "")
        _check_sequence("check_finite", "inputs", inputs)
        for path, leaf in jax.tree_util.tree_flatten_with_path(targets)[0]:
            _check_sequence("check_finite", "targets" + jax.tree_util.keystr(path), leaf)
        loss_value, grads = grad_fn(params, inputs, targets)
        checkify.check(
            jnp.isfinite(loss_value),
            "check_finite: the loss is {loss} although params, inputs and "
            "targets are finite: the model or the loss function produced it (use "
            "errors=checkify.float_checks to find the operation).",
            loss=loss_value,
        )
        _check_leaves("check_finite", "grads", grads, " although the loss is finite")
        return loss_value, grads

    fn = checkify.checkify(checked, errors=frozenset(errors) | checkify.user_checks)
    if not raise_:
        return fn

    def raising(params, inputs, targets):
        err, out = fn(params, inputs, targets)
        err.throw()
        return out

    return raising
