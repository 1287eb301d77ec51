"""What every task shares: the ``Task`` tuple, losses, metrics, the standard networks and a forward pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import _hyper, cells
from .._cell import Cell, is_neuron, layers_of
from .._engine import FiringRateReg, sequence_loss
from .._typing import Array, LossFn, Params, PRNGKey, Targets

SPIKING = ("lif", "alif")
CLASSIC = ("rnn", "lstm", "gru")


class Task(NamedTuple):
    """A learning task: a batch sampler, its loss and metric, and the network it is usually solved with.

    Attributes:
      name: short name (``"evidence"``, ``"pattern"``, ...).
      sample: ``sample(key, batch_size) -> (inputs, targets)``, a pure JAX function of the key (jit it with
        ``static_argnums=1``; vmap it over keys). ``inputs`` has shape ``(batch, time_steps, n_in)``;
        ``targets`` is a dict whose leaves have leading axes ``(batch, time_steps)`` and which always holds
        ``"mask"``: the weight of each step in the loss, zero on the steps that do not count, summing to one
        over each sequence (so the sequence loss is the mean over the steps that count).
      loss: ``loss(outputs_t, targets_t) -> scalar`` for one example and one step (what every rule takes).
      metric: ``metric(outputs, targets) -> scalar``, the batch mean of the task's score, with ``outputs``
        of shape ``(batch, time_steps, n_out)`` (see :func:`forward`).
      network: ``network(key, **options) -> (model, params)``, the model the task is usually solved with;
        keyword options override its defaults (``cell``, ``n_rec``, ``layers``, cell hyperparameters).
      n_in: input width.
      n_out: output width.
      time_steps: sequence length.
      metric_name: ``"accuracy"`` (higher is better), ``"nmse"`` or ``"mse"`` (lower is better).
      reg: the firing-rate regulariser the task is usually trained with (pass it to the rule), or ``None``.
    """

    name: str
    sample: Callable[[PRNGKey, int], tuple[Array, Targets]]
    loss: LossFn
    metric: Callable[[Array, Targets], Array]
    network: Callable[..., tuple[Cell, Params]]
    n_in: int
    n_out: int
    time_steps: int
    metric_name: str
    reg: FiringRateReg | None = None

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric is better (accuracy) or worse (errors)."""
        return self.metric_name == "accuracy"


def batched(sample_one: Callable[[PRNGKey], tuple[Array, Targets]]):
    """``sample(key, batch_size)`` from a one-example sampler: ``vmap`` over ``batch_size`` split keys."""

    def sample(key, batch_size: int):
        return jax.vmap(sample_one)(jax.random.split(key, batch_size))

    return sample


def poisson(key: PRNGKey, prob: Array, dtype) -> Array:
    """Bernoulli spikes with per-entry probability ``prob`` (the discrete-time Poisson process)."""
    return (jax.random.uniform(key, jnp.shape(prob), dtype) < prob).astype(dtype)


def window_mask(active: Array, dtype) -> Array:
    """The loss weights of a boolean window over time: ``1 / count`` on the active steps, else 0."""
    active = active.astype(dtype)
    return active / jnp.maximum(jnp.sum(active), 1).astype(dtype)


# ----------------------------------------------------------------------------------------------------------
# Losses (one example, one step) and metrics (a batch of whole sequences)
# ----------------------------------------------------------------------------------------------------------


def cross_entropy(outputs_t: Array, targets_t: Targets) -> Array:
    """Softmax cross-entropy of the readout against ``targets_t["label"]``, weighted by ``targets_t["mask"]``."""
    label = targets_t["label"]
    return targets_t["mask"].astype(outputs_t.dtype) * (jax.nn.logsumexp(outputs_t) - outputs_t[label])


def squared_error(outputs_t: Array, targets_t: Targets) -> Array:
    """``0.5 * mask * sum (outputs - y)^2`` against ``targets_t["y"]``."""
    err = outputs_t - targets_t["y"].astype(outputs_t.dtype)
    return 0.5 * targets_t["mask"].astype(outputs_t.dtype) * jnp.sum(err**2)


def window_accuracy(outputs: Array, targets: Targets) -> Array:
    """One decision per sequence: the argmax of the readout summed over the masked window."""
    mask = (targets["mask"] > 0).astype(outputs.dtype)
    prediction = jnp.argmax(jnp.sum(mask[..., None] * outputs, axis=1), axis=-1)
    first = jnp.argmax(targets["mask"] > 0, axis=1)
    label = jnp.take_along_axis(targets["label"], first[:, None], axis=1)[:, 0]
    return jnp.mean((prediction.astype(jnp.int32) == label.astype(jnp.int32)).astype(outputs.dtype))


def step_accuracy(outputs: Array, targets: Targets) -> Array:
    """One decision per masked step: the fraction of masked steps whose readout argmax is the label."""
    mask = (targets["mask"] > 0).astype(outputs.dtype)
    hit = (jnp.argmax(outputs, axis=-1).astype(jnp.int32) == targets["label"].astype(jnp.int32)).astype(outputs.dtype)
    return jnp.sum(mask * hit) / jnp.sum(mask)


def nmse(outputs: Array, targets: Targets) -> Array:
    """Normalised mean squared error over the masked steps: ``mean (y_hat - y)^2 / var(y)``, per example."""
    mask = (targets["mask"] > 0).astype(outputs.dtype)[..., None]
    y = targets["y"].astype(outputs.dtype)
    count = jnp.sum(mask, axis=(1, 2))
    mean = jnp.sum(mask * y, axis=(1, 2), keepdims=True) / count[:, None, None]
    err = jnp.sum(mask * (outputs - y) ** 2, axis=(1, 2))
    var = jnp.sum(mask * (y - mean) ** 2, axis=(1, 2))
    return jnp.mean(err / var)


def mse(outputs: Array, targets: Targets) -> Array:
    """Mean squared error over the masked steps (summed over outputs)."""
    mask = (targets["mask"] > 0).astype(outputs.dtype)
    err = jnp.sum((outputs - targets["y"].astype(outputs.dtype)) ** 2, axis=-1)
    return jnp.sum(mask * err) / jnp.sum(mask)


# ----------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------


def network(
    key: PRNGKey,
    n_in: int,
    n_out: int,
    *,
    cell: str = "lif",
    n_rec: int = 64,
    layers: int = 1,
    readout: str | None = None,
    tau_out=20.0,
    zeta_out=None,
    input_scale=1.0,
    rec_scale=1.0,
    adaptive_fraction: float = 1.0,
    dtype=jnp.float32,
    **cell_options,
) -> tuple[Cell, Params]:
    """A stack of ``layers`` recurrent layers and a readout, and its initial parameters.

    The options are checked when the network is built: a ``ValueError`` names the option, its range and the
    value received (the cell factory checks ``cell_options`` the same way).

    Args:
      key: PRNG key for the parameters.
      n_in: input width, a positive int.
      n_out: number of readout units, a positive int.
      cell: ``"lif"``, ``"alif"`` (spiking, see :func:`eproptax.cells.lif`) or ``"rnn"``, ``"lstm"``,
        ``"gru"``.
      n_rec: neurons per recurrent layer, a positive int.
      layers: number of recurrent layers, a positive int.
      readout: ``"leaky"`` (:func:`~eproptax.cells.leaky_readout`, the default for spiking cells) or
        ``"linear"`` (:func:`~eproptax.cells.readout`, the default for the others).
      tau_out: the leaky readout's time constant (in units of the cell's ``dt``), finite and ``> 0``.
      zeta_out: the leaky readout's input gain (:func:`~eproptax.cells.leaky_readout`), finite; ``None``:
        ``1 - exp(-dt / tau_out)`` (NEST's ``regular_spike_arrival = False``; ``1.0`` is ``True``).
      input_scale: factor on the initial input weights of the spiking layers, finite.
      rec_scale: factor on the initial recurrent weights of the spiking layers, finite.
      adaptive_fraction: for ``"alif"``, the fraction of neurons that adapt, in [0, 1] (the others get
        ``beta = 0``, i.e. LIF neurons, as the 50 + 50 network of Bellec et al. 2020).
      dtype: parameter dtype, a floating dtype.
      **cell_options: keyword arguments of the cell factory (``tau_mem``, ``threshold``, ``beta``, ...).

    Returns:
      ``(model, params)``.
    """
    _check_network(n_in, n_out, cell, n_rec, layers, readout, tau_out, input_scale, rec_scale, adaptive_fraction, dtype)
    readout = readout or ("leaky" if cell in SPIKING else "linear")
    if zeta_out is not None and readout != "leaky":
        raise ValueError(f"network: `zeta_out` is the leaky readout's gain; readout {readout!r} has none.")
    if cell not in SPIKING and cell_options:
        raise ValueError(f"network: cell {cell!r} takes no options, got {sorted(cell_options)}.")
    stack = []
    for i in range(layers):
        width = n_in if i == 0 else n_rec
        if cell == "alif":
            options = dict(cell_options)
            beta = options.pop("beta", None)
            if beta is None:  # the cell's documented default, Bellec et al.'s 1.7 in NEST's convention
                rho = jnp.exp(-options.get("dt", 1.0) / jnp.asarray(options.get("tau_adapt", 2000.0)))
                beta = 1.7 * (1.0 - rho)
            n_adapt = int(round(adaptive_fraction * n_rec))
            adapts = jnp.arange(n_rec) >= n_rec - n_adapt
            beta = jnp.where(adapts, jnp.asarray(beta, dtype), jnp.zeros((), dtype))
            stack.append(cells.alif(width, n_rec, beta=beta, dtype=dtype, **options))
        elif cell == "lif":
            stack.append(cells.lif(width, n_rec, dtype=dtype, **cell_options))
        else:
            stack.append(getattr(cells, cell)(width, n_rec, dtype=dtype))
    dt = cell_options.get("dt", 1.0)
    if readout == "leaky":
        stack.append(cells.leaky_readout(n_rec, n_out, tau_out=tau_out, dt=dt, zeta_out=zeta_out, dtype=dtype))
    else:
        stack.append(cells.readout(n_rec, n_out, dtype=dtype))
    model = cells.stack(*stack)
    params = model.init(key)
    if cell in SPIKING:
        params = tuple(
            {
                **p,
                "w_in": p["w_in"] * jnp.asarray(input_scale, dtype),
                "w_rec": p["w_rec"] * jnp.asarray(rec_scale, dtype),
            }
            if "w_rec" in p
            else p
            for p in params
        )
    return model, params


def _check_network(n_in, n_out, cell, n_rec, layers, readout, tau_out, input_scale, rec_scale, fraction, dtype):
    """The options of :func:`network` that it uses itself (the cell factory checks the cell's own)."""
    _hyper.positive_int("network", "n_in", n_in)
    _hyper.positive_int("network", "n_out", n_out)
    _hyper.one_of("network", "cell", cell, SPIKING + CLASSIC)
    _hyper.positive_int("network", "n_rec", n_rec)
    _hyper.positive_int("network", "layers", layers)
    if readout is not None:
        _hyper.one_of("network", "readout", readout, ("leaky", "linear"))
    _hyper.positive("network", "tau_out", tau_out)
    _hyper.finite("network", "input_scale", input_scale)
    _hyper.finite("network", "rec_scale", rec_scale)
    _hyper.probability("network", "adaptive_fraction", fraction)
    _hyper.floating_dtype("network", "dtype", dtype)


NETWORK_OPTIONS = (
    "cell",
    "n_rec",
    "layers",
    "readout",
    "tau_out",
    "zeta_out",
    "input_scale",
    "rec_scale",
    "adaptive_fraction",
    "dtype",
)
ALIF_ONLY = ("beta", "tau_adapt")


def with_defaults(n_in: int, n_out: int, **defaults):
    """``network(key, **options)`` for a task: :func:`network` with the task's sizes and defaults.

    A task's defaults for one cell do not follow a change of cell: asking for ``cell="lstm"`` drops the
    default spiking hyperparameters, and ``cell="lif"`` the default adaptation ones (options passed
    explicitly are kept, and checked by the cell).
    """

    def build(key, **options):
        cell = options.get("cell", defaults.get("cell"))
        kept = {
            k: v
            for k, v in defaults.items()
            if k in NETWORK_OPTIONS or (cell in SPIKING and (cell == "alif" or k not in ALIF_ONLY))
        }
        return network(key, n_in, n_out, **{**kept, **options})

    return build


# ----------------------------------------------------------------------------------------------------------
# Running a model
# ----------------------------------------------------------------------------------------------------------


def forward(model: Cell, params: Params, inputs: Array) -> tuple[Array, tuple[Array, ...]]:
    """Runs ``model`` over a batch of sequences and records every layer's output.

    Args:
      model: a :class:`~eproptax.Cell` (a stack or a single cell).
      params: its parameters.
      inputs: ``(batch, time, n_in)``.

    Returns:
      ``(outputs, layer_outputs)``: the model's outputs ``(batch, time, n_out)`` and, for each layer, its
      outputs ``(batch, time, n_layer)`` (the spikes of a spiking layer).
    """
    layers = layers_of(model)
    stacked = bool(model.layers)

    def one(x_seq):
        def body(carry, x):
            carries = carry if stacked else (carry,)
            ps = params if stacked else (params,)
            new, outs = [], []
            for layer, p, c in zip(layers, ps, carries):
                c, x = layer.apply(p, c, x)
                new.append(c)
                outs.append(x)
            return (tuple(new) if stacked else new[0]), tuple(outs)

        _, outs = jax.lax.scan(body, model.init_carry(params), x_seq)
        return outs

    outs = jax.vmap(one)(inputs)
    return outs[-1], outs


def evaluate(task: Task, model: Cell, params: Params, key: PRNGKey, batch_size: int = 64) -> dict:
    """The task's loss and metric on a fresh batch (no regulariser).

    Returns:
      ``{"loss": float, "<metric_name>": float}``.
    """
    inputs, targets = task.sample(key, batch_size)
    loss = sequence_loss(model, task.loss)(params, inputs, targets)
    outputs, _ = forward(model, params, inputs)
    return {"loss": float(loss), task.metric_name: float(task.metric(outputs, targets))}


def is_spiking(model: Cell) -> bool:
    """Whether the first layer of ``model`` is a spiking cell (its carry has a refractory counter)."""
    first = layers_of(model)[0]
    carry = jax.eval_shape(lambda: first.init_carry(first.init(jax.random.key(0))))
    return is_neuron(first) and hasattr(carry, "refractory")
