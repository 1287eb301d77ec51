"""A training loop on optax: short enough to read and copy, for every rule, per sequence or online."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _hyper as hyper
from ._cell import Cell
from ._engine import OnlineRule, time_major
from ._registry import RULES, make_rule
from ._tricks import scan
from ._typing import GradFn, Params, PRNGKey
from ._validate import check_online_rule
from .tasks._common import Task, forward

Sampler = Callable[[PRNGKey], tuple[jax.Array, Any]]


def train(
    rule_fn: GradFn | OnlineRule | str,
    task_or_sampler: Task | Sampler,
    params: Params,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    key: PRNGKey,
    batch_size: int = 32,
    model: Cell | None = None,
    metric: Callable | None = None,
    online_every: int | None = None,
    progress: bool = True,
    desc: str = "train",
    rule_options: Mapping[str, Any] | None = None,
) -> tuple[Params, dict]:
    """Trains ``params`` for ``steps`` batches with any rule and any optax optimiser.

    Each training step draws a fresh batch from the task (inside the compiled step), computes the rule's
    loss and gradient and applies one optax update. The step is compiled once: ``steps`` calls reuse it.
    A rule that takes a key (``grad_fn(..., key=)``, ``init(..., key=)``: every rule of the library) gets a
    fresh one at every training step, ``jax.random.fold_in`` of the step's key, so a rule that draws noise
    draws new noise each step.

    * Per sequence (``rule_fn`` a whole-sequence rule such as ``ep.eprop(model, loss)``): one update per
      batch of sequences. Pass ``model`` to get the task's metric (one extra forward pass per step).
    * Online (``rule_fn`` an :class:`~eproptax.OnlineRule` such as ``ep.online.eprop(model, loss)`` and
      ``online_every=k``): the rule steps through the sequence and the parameters are updated every ``k``
      time steps (and at the end of the sequence), the network state and traces carrying on across the
      updates; each sequence starts from a fresh state. The metric comes from the outputs seen while
      learning.
    * By name (``rule_fn`` a key of ``ep.rules`` such as ``"eprop_m"``, with ``model`` and a task): the rule
      is built with :func:`~eproptax.make_rule` for ``model`` and the task's loss, with ``rule_options``
      (``{"order": 2, "reg": task.reg}``), in its online form when ``online_every`` is given.

    The semantics, per sequence::

      for step in range(steps):
          key, k = jax.random.split(key)
          inputs, targets = task.sample(k, batch_size)
          loss, grads = rule_fn(params, inputs, targets)
          updates, opt_state = optimizer.update(grads, opt_state, params)
          params = optax.apply_updates(params, updates)

    Args:
      rule_fn: ``grad_fn(params, inputs, targets) -> (loss, grads)`` (any rule of the library), an
        :class:`~eproptax.OnlineRule` (with ``online_every``), or the name of a rule of ``ep.rules`` (with
        ``model`` and a task).
      task_or_sampler: a :class:`~eproptax.tasks.Task`, or ``sampler(key) -> (inputs, targets)`` returning a
        whole batch (then pass ``metric`` for a metric).
      params: initial parameters.
      optimizer: any optax ``GradientTransformation``.
      steps: number of training steps (batches).
      key: PRNG key for the batches.
      batch_size: batch size when sampling from a task.
      model: the model, to compute the metric of a whole-sequence rule.
      metric: ``metric(outputs, targets) -> scalar``; defaults to the task's.
      online_every: update every ``k`` time steps (online rules only).
      progress: show a progress bar with the running loss on stderr.
      desc: label of the progress bar.
      rule_options: keyword options of a rule given by name (``ep.make_rule``'s: ``order``, ``depth``,
        ``feedback``, ``reg``, ...); the task's regulariser is not added unless given here as ``reg``.

    Returns:
      ``(params, history)`` with ``history = {"loss": (steps,), "metric": (steps,), "metric_name": str,
      "wall_s": float}`` (numpy arrays; the metric is NaN where none is available).

    Raises:
      NonFiniteError: (a ``FloatingPointError``) as soon as the loss or a gradient of a step is NaN or
        infinite, naming the step and the first bad gradient leaf; its ``.params`` are the parameters before
        that step. The check reads one flag per step, a step behind, so the loop does not wait on the device.
        To find where inside the sequence the values go bad, wrap the rule in :func:`~eproptax.check_finite`.

    Example::

      task = ep.tasks.pattern_generation()
      model, params = task.network(jax.random.key(0))
      params, history = ep.train(ep.eprop(model, task.loss), task, params, optax.adam(3e-3),
                                 steps=200, key=jax.random.key(1), batch_size=1, model=model)
      # the same by name: ep.train("eprop", task, params, ..., model=model)
    """
    sample, metric, metric_name = _sampler(task_or_sampler, metric, batch_size)
    rule_fn, online = _checked_rule(rule_fn, task_or_sampler, model, rule_options, online_every)
    hyper.positive_int("train", "steps", steps)
    hyper.positive_int("train", "batch_size", batch_size)
    score = metric if (metric is not None and (online or model is not None)) else None
    step = (
        _online_step(rule_fn, sample, optimizer, score, int(online_every))
        if online
        else _sequence_step(rule_fn, sample, optimizer, score, model)
    )
    return _fit(step, params, optimizer, steps=steps, key=key, progress=progress, desc=desc, metric_name=metric_name)


def _sampler(task_or_sampler, metric, batch_size: int):
    """``(sample, metric, metric_name)`` of a task or a sampler, ``sample(key) -> (inputs, targets)`` a batch.

    Raises TypeError for anything else.
    """
    if isinstance(task_or_sampler, Task):
        task = task_or_sampler
        sample = lambda k: task.sample(k, batch_size)
        return sample, metric or task.metric, task.metric_name
    if callable(task_or_sampler):
        return task_or_sampler, metric, "metric"
    raise TypeError(
        f"train: `task_or_sampler` must be a tasks.Task or a function key -> (inputs, targets), "
        f"got {type(task_or_sampler).__name__}."
    )


def _checked_rule(rule_fn, task_or_sampler, model, rule_options, online_every):
    """``(rule, online)``: ``rule_fn`` (built from the registry if a name), checked against ``online_every``.

    Raises ValueError for ``rule_options`` without a rule name, or an ``online_every`` that does not fit the rule.
    """
    if isinstance(rule_fn, str):
        rule_fn = _rule_by_name(rule_fn, task_or_sampler, model, rule_options, online_every)
    elif rule_options is not None:
        raise ValueError(
            f"train: `rule_options` configures a rule given by name (one of {', '.join(RULES)}), got "
            f"`rule_fn` a {type(rule_fn).__name__}; pass the options to its factory instead."
        )
    online = isinstance(rule_fn, OnlineRule)
    if online:
        check_online_rule("train", rule_fn)
    elif not callable(rule_fn):
        raise TypeError(
            f"train: `rule_fn` must be a rule's grad_fn, an OnlineRule or a rule's name (one of {', '.join(RULES)}), "
            f"got {type(rule_fn).__name__}."
        )
    if online_every is not None and not online:
        raise ValueError(
            "train: `online_every` needs an online rule (ep.online.eprop(model, loss), ...), got a "
            "whole-sequence grad_fn; drop `online_every` to update once per sequence."
        )
    if online and online_every is None:
        raise ValueError(
            "train: an OnlineRule needs `online_every`, a positive number of time steps between updates, got None."
        )
    if online:
        hyper.positive_int("train", "online_every", online_every)
    return rule_fn, online


def _fit(step, params, optimizer, *, steps: int, key, progress: bool, desc: str, metric_name: str):
    """Runs the compiled ``step`` ``steps`` times from ``optimizer.init(params)``; returns ``(params, history)``."""
    opt_state = optimizer.init(params)
    losses, metrics, flags, before = [], [], [], [params]
    bar = _Progress(steps, desc, metric_name) if progress else None
    start = time.perf_counter()
    for i in range(steps):
        key, k = jax.random.split(key)
        params, opt_state, loss, value, bad = step(params, opt_state, k)
        losses.append(loss)
        metrics.append(value)
        flags.append(bad)
        before = [*before[-2:], params]  # the parameters steps i - 1, i and i + 1 start from
        if i > 0:  # the check of step i - 1 waits for it, while step i runs
            _stop_if_not_finite(i - 1, steps, (losses, metrics, flags), before[0], bar)
        if bar is not None:
            bar.update(i + 1, losses, metrics)
    _stop_if_not_finite(steps - 1, steps, (losses, metrics, flags), before[-2], bar)
    jax.block_until_ready(params)
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close(losses, metrics)
    history = {
        "loss": np.asarray(jnp.stack(losses)),
        "metric": np.asarray(jnp.stack(metrics)),
        "metric_name": metric_name,
        "wall_s": wall,
    }
    return params, history


class NonFiniteError(FloatingPointError):
    """Raised by :func:`train` when the loss or a gradient of a training step is NaN or infinite.

    Attributes:
      step: the training step (counting from 0) whose loss or gradient went bad.
      params: the parameters that step started from (finite, unless the optimiser's own update made them
        non-finite).
    """

    def __init__(self, message: str, step: int, params):
        super().__init__(message)
        self.step, self.params = step, params


def _not_finite(loss, grads):
    """``(loss is not finite, [gradient leaf is not finite, ...])``, on the device."""
    return ~jnp.isfinite(loss), jnp.stack([~jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])


def _stop_if_not_finite(i: int, steps: int, records, params, bar) -> None:
    """Raises :class:`NonFiniteError` naming step ``i``, the loss or the first bad gradient leaf (reads the device)."""
    losses, metrics, flags = records
    loss_bad, grad_bad = (np.asarray(f) for f in flags[i])
    if not loss_bad and not grad_bad.any():
        return
    if bar is not None:
        bar.close(losses[: i + 1], metrics[: i + 1])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    loss, grad = f"the loss is {float(losses[i])}", "the gradient is not finite, first in grads"
    grad += paths[int(np.argmax(grad_bad))] if grad_bad.any() else ""
    what = f"{loss} and {grad}" if loss_bad and grad_bad.any() else f"{loss} (the gradient is finite)"
    what = what if loss_bad else f"{grad} (the loss is {float(losses[i])})"
    raise NonFiniteError(
        f"train: training stopped at step {i} of {steps} (counting from 0): {what}. The error's `.params` are "
        "the parameters before that step. Lower the learning rate or clip the gradient "
        "(optax.clip_by_global_norm); ep.check_finite(grad_fn) finds the first time step that goes bad.",
        i,
        params,
    )


def _rule_by_name(name: str, task, model, options, online_every):
    """The rule ``name`` of the registry for ``model`` and the task's loss (its online form with ``online_every``)."""
    if model is None:
        raise ValueError(f"train: a rule given by name ({name!r}) needs `model=`, the model to build it for, got None.")
    if not isinstance(task, Task):
        raise ValueError(
            f"train: a rule given by name ({name!r}) needs a tasks.Task (its loss builds the rule), got "
            f"{type(task).__name__}; build the rule with ep.make_rule(name, model, loss) and pass it instead."
        )
    return make_rule(name, model, task.loss, online=online_every is not None, **dict(options or {}))


def _takes_key(fn) -> bool:
    """Whether ``fn`` takes a ``key`` keyword (the engine's rules do; a hand-written rule may not)."""
    try:
        return "key" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _rule_key(key):
    """The key a rule that draws noise gets at a training step: apart from the batch's ``sample(key)``."""
    return jax.random.fold_in(key, 1)


def _sequence_step(grad_fn, sample, optimizer, metric, model):
    keyed = _takes_key(grad_fn)

    @jax.jit
    def step(params, opt_state, key):
        inputs, targets = sample(key)
        extra = {"key": _rule_key(key)} if keyed else {}
        loss, grads = grad_fn(params, inputs, targets, **extra)
        value = jnp.full((), jnp.nan, loss.dtype)
        if metric is not None:
            value = metric(forward(model, params, inputs)[0], targets).astype(loss.dtype)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, value, _not_finite(loss, grads)

    return step


def _online_step(rule: OnlineRule, sample, optimizer, metric, every: int):
    keyed = _takes_key(rule.init)

    @jax.jit
    def step(params, opt_state, key):
        inputs, targets = sample(key)
        batch, time_steps = inputs.shape[:2]
        xs = (time_major(inputs), time_major(targets))

        def window(carry, chunk):  # ``every`` time steps, then one update
            params, opt_state, state, total, bad = carry
            state, outputs = scan(lambda s, xt: rule.step(params, s, xt[0], xt[1]), state, chunk)  # platform unroll
            loss, grads = rule.result(params, state)
            bad = jax.tree_util.tree_map(jnp.logical_or, bad, _not_finite(loss, grads))  # any window's
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state, rule.reset(state), total + loss, bad), outputs

        state = rule.init(params, batch, key=_rule_key(key)) if keyed else rule.init(params, batch)
        bad = jax.tree_util.tree_map(jnp.zeros_like, _not_finite(state.loss, params))
        carry = (params, opt_state, state, jnp.zeros((), state.loss.dtype), bad)
        n_windows, rest = divmod(time_steps, every)
        chunks = jax.tree_util.tree_map(lambda a: a[: n_windows * every].reshape((n_windows, every) + a.shape[1:]), xs)
        carry, outputs = jax.lax.scan(window, carry, chunks)
        outputs = outputs.reshape((n_windows * every,) + outputs.shape[2:])
        if rest:
            carry, tail = window(carry, jax.tree_util.tree_map(lambda a: a[n_windows * every :], xs))
            outputs = jnp.concatenate([outputs, tail])
        params, opt_state, _, total, bad = carry
        value = jnp.full((), jnp.nan, total.dtype)
        if metric is not None:
            value = metric(jnp.swapaxes(outputs, 0, 1), targets).astype(total.dtype)
        return params, opt_state, total, value, bad

    return step


class _Progress:
    """A plain-text progress bar on stderr: steps done, running loss and metric, speed."""

    def __init__(self, total: int, desc: str, metric_name: str, width: int = 24):
        self.total, self.desc, self.metric_name, self.width = total, desc, metric_name, width
        # a terminal gets one line redrawn in place; a log file a new line every 10 s
        self.tty = sys.stderr.isatty()
        self.every_s, self.end = (0.25, "") if self.tty else (10.0, "\n")
        self.start = self.last = time.perf_counter()

    def _line(self, done, losses, metrics) -> str:
        recent = slice(max(0, done - 20), done)  # running mean over the last 20 steps
        loss = float(np.mean([float(v) for v in losses[recent]]))
        value = float(np.mean([float(v) for v in metrics[recent]]))
        elapsed = time.perf_counter() - self.start
        filled = int(self.width * done / self.total)
        bar = "=" * filled + (">" if filled < self.width else "") + " " * (self.width - filled - 1)
        text = ("\r" if self.tty else "") + f"{self.desc} {done:>{len(str(self.total))}}/{self.total} "
        text += f"[{bar[: self.width]}] loss {loss:.4g}"
        if not np.isnan(value):
            text += f" {self.metric_name} {value:.4g}"
        return text + f" {done / max(elapsed, 1e-9):.2f} it/s {elapsed:.0f}s"

    def update(self, done, losses, metrics) -> None:
        if time.perf_counter() - self.last >= self.every_s or done == 1:
            sys.stderr.write(self._line(done, losses, metrics) + self.end)  # waits for the queued steps
            sys.stderr.flush()
            self.last = time.perf_counter()

    def close(self, losses, metrics) -> None:
        sys.stderr.write(self._line(len(losses), losses, metrics) + "\n")
        sys.stderr.flush()
