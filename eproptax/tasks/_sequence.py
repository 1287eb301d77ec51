"""Classic long-memory problems for non-spiking cells: delayed copy and adding (Hochreiter and Schmidhuber 1997)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import _hyper
from ._common import Task, batched, cross_entropy, mse, squared_error, step_accuracy, window_mask, with_defaults


def delayed_copy(*, n_symbols: int = 4, length: int = 5, delay: int = 10, dtype=jnp.float32) -> Task:
    """Delayed copy (the copy-memory problem): read ``length`` symbols, wait, write them back in order.

    Steps ``0 .. length - 1`` show random symbols (one-hot over ``n_symbols`` channels); ``delay`` blank
    steps follow; then a GO channel is on for ``length`` steps, during which the network must output the
    symbols in the order it saw them (softmax over ``n_symbols`` readouts, cross-entropy on those steps).
    ``time_steps = 2 * length + delay``; ``n_in = n_symbols + 1``. Chance accuracy is ``1 / n_symbols``.

    Args:
      n_symbols: alphabet size, a positive int.
      length: symbols to copy, a positive int.
      delay: blank steps between the last symbol and the first GO step, an int ``>= 0``.
      dtype: floating dtype of the inputs and masks.

    Returns:
      A :class:`Task` (``metric_name="accuracy"``, per symbol) whose ``network`` is an LSTM of 32 units and a
      linear readout.

    References:
      Hochreiter and Schmidhuber. "Long short-term memory", Neural Computation 9(8), 1997; Arjovsky, Shah,
      Bengio. "Unitary evolution recurrent neural networks", ICML 2016.
    """
    _hyper.positive_int("delayed_copy", "n_symbols", n_symbols)
    _hyper.positive_int("delayed_copy", "length", length)
    _hyper.int_at_least("delayed_copy", "delay", delay, 0)
    _hyper.floating_dtype("delayed_copy", "dtype", dtype)
    time_steps = 2 * length + delay
    n_in = n_symbols + 1

    def sample_one(key):
        symbols = jax.random.randint(key, (length,), 0, n_symbols, dtype=jnp.int32)
        t = jnp.arange(time_steps, dtype=jnp.int32)
        shown = t < length
        recall = t >= length + delay
        channel = jnp.where(shown, symbols[jnp.minimum(t, length - 1)], n_symbols)
        inputs = jax.nn.one_hot(channel, n_in, dtype=dtype) * (shown | recall).astype(dtype)[:, None]
        label = jnp.where(recall, symbols[jnp.clip(t - length - delay, 0, length - 1)], 0).astype(jnp.int32)
        return inputs, {"label": label, "mask": window_mask(recall, dtype)}

    network = with_defaults(n_in, n_symbols, cell="lstm", n_rec=32, dtype=dtype)
    return Task(
        "copy", batched(sample_one), cross_entropy, step_accuracy, network, n_in, n_symbols, time_steps, "accuracy"
    )


def adding(*, time_steps: int = 30, dtype=jnp.float32) -> Task:
    """The adding problem: output the sum of the two marked numbers at the last step.

    Each step shows a number uniform in [0, 1] (channel 0) and a marker (channel 1) that is 1 at exactly two
    steps, one in each half of the sequence. The target, at the last step only, is the sum of the two
    marked numbers (squared error). Predicting the mean, 1, gives a mean squared error of 1/6 ~ 0.167.

    Args:
      time_steps: sequence length, an int ``>= 2``.
      dtype: floating dtype of the inputs and targets.

    Returns:
      A :class:`Task` (``metric_name="mse"``) whose ``network`` is an LSTM of 32 units and a linear readout.

    References:
      Hochreiter and Schmidhuber. "Long short-term memory", Neural Computation 9(8), 1997.
    """
    _hyper.int_at_least("adding", "time_steps", time_steps, 2)
    _hyper.floating_dtype("adding", "dtype", dtype)
    half = time_steps // 2

    def sample_one(key):
        k_values, k_first, k_second = jax.random.split(key, 3)
        values = jax.random.uniform(k_values, (time_steps,), dtype)
        first = jax.random.randint(k_first, (), 0, half, dtype=jnp.int32)
        second = jax.random.randint(k_second, (), half, time_steps, dtype=jnp.int32)
        t = jnp.arange(time_steps, dtype=jnp.int32)
        marker = ((t == first) | (t == second)).astype(dtype)
        inputs = jnp.stack([values, marker], axis=-1)
        y = jnp.zeros((time_steps, 1), dtype).at[-1, 0].set(values[first] + values[second])
        return inputs, {"y": y, "mask": window_mask(t == time_steps - 1, dtype)}

    network = with_defaults(2, 1, cell="lstm", n_rec=32, dtype=dtype)
    return Task("adding", batched(sample_one), squared_error, mse, network, 2, 1, time_steps, "mse")
