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

So both libraries run the same network on the same weights. Each algorithm (D-RTRL, and EProp, which is
D-RTRL plus an optional low-pass filter of the trace) accumulates the gradient of ``sum_t 0.5 |y_t -
y*_t|^2`` over the sequence with ``etrace_grad``. ``out.npz`` gets each algorithm's gradients
(``<algo>/<param>``) and its wall time per sequence (``<algo>/seconds``: minimum over ``repeats`` calls of
the jitted sequence function, after one call that compiles it), plus ``<algo>/compile_s``.
"""

import importlib.util
import os
import sys
import time

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
    ``jax.custom_jvp``), loaded from ``eproptax/cells/_surrogate.py``, which needs only jax: eproptax itself
    is not installed in this venv."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eproptax", "cells", "_surrogate.py")
    spec = importlib.util.spec_from_file_location("eproptax_surrogate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.spike_fn("piecewise_linear")


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


def run(algorithm, cell, w, hyper, xs, ys, repeats, **options):
    model = build(cell, w, hyper)
    learner = braintrace.compile(model, algorithm, xs[0], **options)

    def step_loss(x, y):
        return 0.5 * jnp.sum((learner(x) - y) ** 2)

    def sequence(xs, ys):
        learner.reset_state()
        return learner.etrace_grad(xs, ys, step_fn=step_loss, reduction="sum")

    fn = brainstate.transform.jit(sequence)
    start = time.perf_counter()
    grads = jax.block_until_ready(fn(xs, ys))
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(xs, ys))
        best = min(best, time.perf_counter() - start)
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
    return out, best, compile_s


def main(src, dst):
    data = dict(np.load(src))
    xs, ys = jnp.asarray(data.pop("x"), jnp.float32), jnp.asarray(data.pop("y"), jnp.float32)
    repeats = int(data.pop("repeats", 3))
    cell = str(data.pop("cell", "gru"))
    hyper = {k: float(data.pop(k)) for k in ("alpha", "zeta", "threshold", "height") if k in data}
    w = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
    result = {"braintrace_version": str(getattr(braintrace, "__version__", "")), "jax_version": jax.__version__}
    for name, algorithm, options in (("D_RTRL", braintrace.D_RTRL, {}), ("EProp", braintrace.EProp, {})):
        grads, seconds, compile_s = run(algorithm, cell, w, hyper, xs, ys, repeats, **options)
        result.update({f"{name}/{k}": v for k, v in grads.items()})
        result[f"{name}/seconds"], result[f"{name}/compile_s"] = seconds, compile_s
    np.savez(dst, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
