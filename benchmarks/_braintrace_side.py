"""Runs inside the braintrace virtual environment (benchmarks/.envs/braintrace): online gradients of a GRU
or a LIF network.

    python _braintrace_side.py in.npz out.npz

``in.npz`` holds ``cell`` (``"gru"`` or ``"lif"``), ``x`` (T, n_in), ``y`` (T, n_out), the cell's weights
and those of a linear readout (``w_out`` (n_out, n), ``b_out``), and ``repeats``.

* GRU: eproptax's reset-after GRU in flax's layout (``ir_kernel`` (n_in, n), ``ir_bias``, ``iz_kernel``,
  ``iz_bias``, ``in_kernel``, ``in_bias``, ``hr_kernel`` (n, n), ``hz_kernel``, ``hn_kernel``,
  ``hn_bias``), written here with ``braintrace.nn.Linear`` layers (braintrace's own ``GRUCell`` is the
  reset-before variant, a different network).
* LIF: eproptax's (NEST's) LIF, ``w_in`` (n, n_in) and ``w_rec`` (n, n) post x pre, with ``alpha``,
  ``zeta``, ``threshold`` and ``height``: ``v = alpha v + zeta (w_in x + w_rec z_prev) - threshold
  z_prev`` with the reset detached, ``z = H(v - threshold)`` with the pseudo-derivative ``height
  max(0, 1 - |v - threshold| / threshold)``, no autapses (a masked diagonal), written here as a braintrace
  module (braintrace's spiking neurons are other models), the spike eproptax's own ``jax.custom_jvp``.

So both libraries run the same network on the same weights. Each algorithm accumulates the gradient of
``sum_t 0.5 |y_t - y*_t|^2`` over the sequence with ``etrace_grad``, one step at a time
(``vjp_method='single-step'``), after resetting both its traces and the network's state. ``algorithms``
(comma-separated, default ``D_RTRL,EProp``) picks them from braintrace 0.2.8's public classes:

* ``D_RTRL``: ``braintrace.D_RTRL`` (per-parameter trace, ``recurrence_scope='diagonal'``: the recurrent
  mixing primitive is dropped from the trace's Jacobian, e-prop's regime);
* ``EProp``: ``braintrace.EProp`` (D-RTRL plus an optional low-pass filter of the trace, off by default);
* ``SnAp1``, ``SnAp2``: ``braintrace.SnAp(n=1)`` (canonicalised to ``recurrence_scope='coupled'``: each
  neuron's own recurrent weight stays in its Jacobian) and ``SnAp(n=2)`` (the influence masked to the
  two-step pattern: all-to-all on a dense recurrent layer, so RTRL within the hidden group);
* ``UORO``: ``braintrace.UORO`` (rank-one random projection of the influence), its random signs from
  ``projection_key``, set to the jitted sequence's ``key`` argument before each reset;
* ``pp_prop``, ``pp_prop_symmetric`` (LIF): ``braintrace.pp_prop`` (ES-D-RTRL, input/output-factorized
  trace) with ``decay_or_rank=(alpha, 0.0)`` (the input trace leaks with the membrane's ``alpha``, the
  output side keeps only this step's ``df``) and with its one-decay form ``decay_or_rank=alpha``;
  ``pp_prop_half`` (any cell): ``decay_or_rank=0.5``, both traces smoothed.

``out.npz`` gets each algorithm's gradients (``<algo>/<param>``, from a sequence run with ``key =
jax.random.key(0)``) and its wall time per sequence (``<algo>/seconds``: minimum over up to ``repeats``
calls of the jitted sequence function, fewer when they would take over ``BUDGET_S``, after one call that
compiles it), plus ``<algo>/compile_s``. With ``uoro_keys`` = K > 0, UORO also runs with keys 1..K:
``UORO/mean/<param>`` (the mean of the K estimates), ``UORO/mean_quarter/<param>`` (of the first K/4)
and ``UORO/single/<param>`` (the first eight, stacked).
"""

import importlib.util
import os
import sys
import time
import types

import brainstate
import braintrace
import jax
import jax.numpy as jnp
import numpy as np


class _OneState(brainstate.nn.Module):
    """A network whose state is one hidden vector ``h`` of ``self.n`` values (a GRU's output, a LIF's membrane)."""

    def init_state(self, batch_size=None, **kwargs):
        self.h = brainstate.HiddenState(jnp.zeros((self.n,), jnp.float32))

    def reset_state(self, batch_size=None, **kwargs):
        self.h.value = jnp.zeros((self.n,), jnp.float32)


class GRU(_OneState):
    """eproptax's (and flax's) reset-after GRU with a linear readout, every product an ETP ``Linear``."""

    def __init__(self, w):
        super().__init__()
        L = braintrace.nn.Linear
        n_in, n = w["ir_kernel"].shape
        self.n = n
        self.ir = L(n_in, n, w_init=w["ir_kernel"], b_init=w["ir_bias"])
        self.iz = L(n_in, n, w_init=w["iz_kernel"], b_init=w["iz_bias"])
        self.in_ = L(n_in, n, w_init=w["in_kernel"], b_init=w["in_bias"])
        self.hr = L(n, n, w_init=w["hr_kernel"], b_init=None)
        self.hz = L(n, n, w_init=w["hz_kernel"], b_init=None)
        self.hn = L(n, n, w_init=w["hn_kernel"], b_init=w["hn_bias"])
        self.out = L(n, w["w_out"].shape[0], w_init=w["w_out"].T, b_init=w["b_out"])

    def update(self, x):
        h = self.h.value
        r = jax.nn.sigmoid(self.ir(x) + self.hr(h))
        u = jax.nn.sigmoid(self.iz(x) + self.hz(h))
        c = jnp.tanh(self.in_(x) + r * self.hn(h))
        h = (1 - u) * c + u * h
        self.h.value = h
        return self.out(h)


def _eproptax_spike():
    """eproptax's own spike (``x >= 0`` forward, ``height * max(0, 1 - |x / width|)`` as its derivative, a
    ``jax.custom_jvp``), loaded from ``eproptax/cells/_surrogate.py`` and the ``eproptax/_hyper.py`` it
    imports (``from .. import _hyper``), which need only jax and numpy: eproptax itself is not installed in
    this venv, so the two files are loaded under a stand-in package ``_eproptax_files``."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eproptax")

    def load(name, *parts):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, *parts))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    for name, path in (("_eproptax_files", root), ("_eproptax_files.cells", os.path.join(root, "cells"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    sys.modules["_eproptax_files"]._hyper = load("_eproptax_files._hyper", "_hyper.py")
    return load("_eproptax_files.cells._surrogate", "cells", "_surrogate.py").spike_fn("piecewise_linear")


spike = _eproptax_spike()


class LIF(_OneState):
    """eproptax's LIF (NEST's ``eprop_iaf_bsshslm_2020``) with a linear readout of its spikes; ``h`` is the
    membrane."""

    def __init__(self, w, alpha, zeta, threshold, height):
        super().__init__()
        L = braintrace.nn.Linear
        n, n_in = w["w_in"].shape
        self.n, self.alpha, self.zeta, self.threshold, self.height = n, alpha, zeta, threshold, height
        self.inp = L(n_in, n, w_init=w["w_in"].T, b_init=None)
        self.rec = L(n, n, w_init=w["w_rec"].T, b_init=None, w_mask=1 - jnp.eye(n, dtype=jnp.float32))
        self.out = L(n, w["w_out"].shape[0], w_init=w["w_out"].T, b_init=w["b_out"])

    def update(self, x):
        v = self.h.value
        z_prev = spike(v - self.threshold, self.height, self.threshold)
        v = (
            self.alpha * v
            + self.zeta * (self.inp(x) + self.rec(z_prev))
            - self.threshold * jax.lax.stop_gradient(z_prev)
        )
        self.h.value = v
        return self.out(spike(v - self.threshold, self.height, self.threshold))


# braintrace's layer names -> the payload's names of their kernels (and biases)
NAMES = {"ir": "ir", "iz": "iz", "in_": "in", "hr": "hr", "hz": "hz", "hn": "hn", "inp": "w_in", "rec": "w_rec"}


def build(cell, w, hyper):
    return GRU(w) if cell == "gru" else LIF(w, **hyper)


BUDGET_S = 3.0  # timed calls per algorithm stop once they would exceed this (SnAp-2 runs RTRL's influence)


def run(algorithm, cell, w, hyper, xs, ys, repeats, uoro_keys=0, **options):
    model = build(cell, w, hyper)
    learner = braintrace.compile(model, algorithm, xs[0], **options)

    def step_loss(x, y):
        return 0.5 * jnp.sum((learner(x) - y) ** 2)

    def sequence(xs, ys, key):
        if isinstance(learner, braintrace.UORO):  # reset_state re-derives the random stream from projection_key
            learner.projection_key = key
        learner.reset_state()  # the traces (and UORO's stream)
        model.reset_state()  # the network's state: learner.reset_state leaves it at the last sequence's end
        return learner.etrace_grad(xs, ys, step_fn=step_loss, reduction="sum")

    fn = brainstate.transform.jit(sequence)
    key = jax.random.key(0)
    start = time.perf_counter()
    grads = jax.block_until_ready(fn(xs, ys, key))
    compile_s = time.perf_counter() - start
    best, spent, count = float("inf"), 0.0, 0
    while count < repeats and (count == 0 or spent + best <= BUDGET_S):
        start = time.perf_counter()
        jax.block_until_ready(fn(xs, ys, key))
        elapsed = time.perf_counter() - start
        best, spent, count = min(best, elapsed), spent + elapsed, count + 1
    out = {"": named_grads(cell, grads)}
    if uoro_keys:
        single = [named_grads(cell, fn(xs, ys, jax.random.key(k))) for k in range(1, uoro_keys + 1)]
        quarter = max(1, uoro_keys // 4)
        out["mean/"] = {name: np.mean([g[name] for g in single], 0) for name in single[0]}
        out["mean_quarter/"] = {name: np.mean([g[name] for g in single[:quarter]], 0) for name in single[0]}
        out["single/"] = {name: np.stack([g[name] for g in single[:8]]) for name in single[0]}
    return out, best, compile_s


def named_grads(cell, grads):
    """braintrace's ``{(layer, ...): {"weight", "bias"}}`` gradients by the payload's names."""
    out = {}
    for (layer, _), g in grads.items():
        if layer == "out":
            out["w_out"], out["b_out"] = np.asarray(g["weight"]).T, np.asarray(g["bias"])
        elif cell == "lif":  # braintrace's (in, out) kernels, back to eproptax's post x pre
            out[NAMES[layer]] = np.asarray(g["weight"]).T
        else:
            out[NAMES[layer] + "_kernel"] = np.asarray(g["weight"])
            if "bias" in g:
                out[NAMES[layer] + "_bias"] = np.asarray(g["bias"])
    return out


def algorithms(hyper):
    """The algorithms by name: ``(class, options)``."""
    single = {"vjp_method": "single-step"}
    out = {
        "D_RTRL": (braintrace.D_RTRL, {}),
        "EProp": (braintrace.EProp, {}),
        "SnAp1": (braintrace.SnAp, {"n": 1, **single}),
        "SnAp2": (braintrace.SnAp, {"n": 2, **single}),
        "UORO": (braintrace.UORO, single),
        "pp_prop_half": (braintrace.pp_prop, {"decay_or_rank": 0.5, **single}),
    }
    if "alpha" in hyper:
        out["pp_prop"] = (braintrace.pp_prop, {"decay_or_rank": (hyper["alpha"], 0.0), **single})
        out["pp_prop_symmetric"] = (braintrace.pp_prop, {"decay_or_rank": hyper["alpha"], **single})
    return out


def main(src, dst):
    data = dict(np.load(src))
    xs, ys = jnp.asarray(data.pop("x"), jnp.float32), jnp.asarray(data.pop("y"), jnp.float32)
    repeats = int(data.pop("repeats", 3))
    cell = str(data.pop("cell", "gru"))
    names = str(data.pop("algorithms", "D_RTRL,EProp")).split(",")
    uoro_keys = int(data.pop("uoro_keys", 0))
    hyper = {k: float(data.pop(k)) for k in ("alpha", "zeta", "threshold", "height") if k in data}
    w = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
    result = {"braintrace_version": str(getattr(braintrace, "__version__", "")), "jax_version": jax.__version__}
    table = algorithms(hyper)
    for name in names:
        algorithm, options = table[name]
        keys = uoro_keys if name == "UORO" else 0
        grads, seconds, compile_s = run(algorithm, cell, w, hyper, xs, ys, repeats, keys, **options)
        for prefix, tree in grads.items():
            result.update({f"{name}/{prefix}{k}": v for k, v in tree.items()})
        result[f"{name}/seconds"], result[f"{name}/compile_s"] = seconds, compile_s
    np.savez(dst, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
