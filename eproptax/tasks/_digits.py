"""Sequential 8x8 digits (scikit-learn's bundled copy of the UCI optical digits), rows as time steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper
from .._engine import FiringRateReg
from ._common import Task, cross_entropy, poisson, window_accuracy, window_mask, with_defaults

N_TEST = 297  # the last 297 of 1797 images after a fixed shuffle (an 1500 / 297 split)


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tasks.digits needs scikit-learn, which ships the 8x8 digits: "
            "pip install 'eproptax[datasets]' (or pip install scikit-learn)."
        ) from error
    data = load_digits()
    order = np.random.RandomState(0).permutation(len(data.target))
    return data.images[order] / 16.0, data.target[order]


def digits(
    *,
    split: str = "train",
    encoding: str = "spikes",
    row_steps: int = 5,
    recall_steps: int = 10,
    max_rate: float = 0.5,
    n_population: int = 4,
    dtype=jnp.float32,
) -> Task:
    """The 8x8 handwritten digits read row by row, as spikes or as analog values, classified at the end.

    Each image (scikit-learn's ``load_digits``: 1797 images of 8 x 8 pixels with 17 grey levels, bundled
    with the package, so nothing is downloaded) is shown one row at a time, each row for ``row_steps``
    steps, followed by ``recall_steps`` steps in which a RECALL channel is on and the network must name
    the digit (softmax over ten readouts, cross-entropy over the recall window; the decision is the argmax
    of the readouts summed over it). With ``encoding="spikes"`` each pixel drives ``n_population`` input
    neurons firing with probability ``max_rate * intensity`` per step (and the RECALL population at
    ``max_rate``); with ``encoding="analog"`` the 8 intensities of the row (and the RECALL flag) are the
    inputs, for LSTM or GRU networks. A fixed shuffle splits the images into 1500 for ``"train"`` and 297
    for ``"test"``.

    Needs scikit-learn (``pip install 'eproptax[datasets]'``), imported when this function is called.

    The options are checked when the task is built, before scikit-learn is imported (a ``ValueError`` names
    the option, its range and the value received).

    Args:
      split: ``"train"`` or ``"test"``.
      encoding: ``"spikes"`` or ``"analog"``.
      row_steps: steps per image row, a positive int.
      recall_steps: steps of the recall window, a positive int.
      max_rate: spike probability per step of a pixel of full intensity (``"spikes"``), in ``[0, 1]``.
      n_population: input neurons per pixel and for the recall cue (``"spikes"``), a positive int.
      dtype: floating dtype of the inputs and masks.

    Returns:
      A :class:`Task` (``metric_name="accuracy"``) whose ``network`` is 100 ALIF neurons (half adaptive) and
      a leaky readout for spikes, an LSTM of 64 units and a linear readout for analog inputs.
    """
    _check_digits(split, encoding, row_steps, recall_steps, max_rate, n_population, dtype)
    images, labels = _load_digits()
    part = slice(None, -N_TEST) if split == "train" else slice(-N_TEST, None)
    images, labels = jnp.asarray(images[part], dtype), jnp.asarray(labels[part], jnp.int32)
    time_steps = 8 * row_steps + recall_steps
    copies = n_population if encoding == "spikes" else 1
    n_in = 9 * copies

    def sample_one(key):
        k_index, k_spikes = jax.random.split(key)
        index = jax.random.randint(k_index, (), 0, labels.shape[0], dtype=jnp.int32)
        t = jnp.arange(time_steps, dtype=jnp.int32)
        recall = t >= 8 * row_steps
        rows = images[index][jnp.minimum(t // row_steps, 7)] * (~recall).astype(dtype)[:, None]  # (T, 8)
        values = jnp.concatenate([rows, recall.astype(dtype)[:, None]], axis=-1)  # (T, 9)
        if encoding == "spikes":
            inputs = poisson(k_spikes, max_rate * jnp.repeat(values, copies, axis=-1), dtype)
        else:
            inputs = values
        targets = {"label": jnp.full((time_steps,), labels[index], jnp.int32), "mask": window_mask(recall, dtype)}
        return inputs, targets

    def sample(key, batch_size: int):
        return jax.vmap(sample_one)(jax.random.split(key, batch_size))

    if encoding == "spikes":
        network = with_defaults(
            n_in,
            10,
            cell="alif",
            n_rec=100,
            adaptive_fraction=0.5,
            tau_out=10.0,
            input_scale=0.3,
            dtype=dtype,
            tau_mem=20.0,
            tau_adapt=float(time_steps),
            beta=0.05,
            threshold=0.6,
            zeta=1.0,
            surrogate_height=0.3 / 0.6,
        )
        reg = FiringRateReg(c_reg=1.0, f_target=0.02)
    else:
        network = with_defaults(n_in, 10, cell="lstm", n_rec=64, dtype=dtype)
        reg = None
    return Task("digits", sample, cross_entropy, window_accuracy, network, n_in, 10, time_steps, "accuracy", reg)


def _check_digits(split, encoding, row_steps, recall_steps, max_rate, n_population, dtype):
    _hyper.one_of("digits", "split", split, ("train", "test"))
    _hyper.one_of("digits", "encoding", encoding, ("spikes", "analog"))
    _hyper.positive_int("digits", "row_steps", row_steps)
    _hyper.positive_int("digits", "recall_steps", recall_steps)
    _hyper.probability("digits", "max_rate", max_rate)
    _hyper.positive_int("digits", "n_population", n_population)
    _hyper.floating_dtype("digits", "dtype", dtype)
