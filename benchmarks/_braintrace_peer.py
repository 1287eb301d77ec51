"""The eproptax side of the braintrace comparison (used by ``peers.py``; the peer side is ``_braintrace_side.py``).

Networks: eproptax's reset-after GRU (flax's ``GRUCell``) and its LIF (NEST's, reset detached, no
autapses), each with a stateless linear readout, one sequence (braintrace's learners run unbatched),
float32. The GRU's recurrent kernels get a zero diagonal: braintrace's D-RTRL keeps the diagonal of the
hidden-to-hidden Jacobian, which includes a neuron's own recurrent weight, while e-prop drops every
explicit recurrent path, its own included; without self-connections the two are the same rule, so their
gradients must agree to float32 rounding. The LIF has none by construction (its ``w_rec`` diagonal is
masked on both sides), and with the reset detached its Jacobian diagonal is ``alpha``, e-prop's. Reported: the
gradients' relative error
against eproptax's ``eprop`` (and each one's against BPTT), and the time per sequence of the jitted
functions after compilation (the minimum over ``ROUNDS`` turns of each side, interleaved).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import eproptax as ep
from eproptax._bench import _best_times
from eproptax._compare import mse

ROUNDS = 7


def _checked(model, params, inputs, targets):
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves((params, inputs, targets))}
    assert dtypes == {jnp.dtype(jnp.float32)}, f"the braintrace comparison runs in float32, got {dtypes}"
    return model, params, inputs, targets


def _targets(T, n_out):
    return {
        "y": jnp.sin(jnp.linspace(0, 6, T, dtype=jnp.float32))[None, :, None] * jnp.ones((1, 1, n_out), jnp.float32),
        "mask": jnp.ones((1, T), jnp.float32),
    }


def lif_problem(n_in, n, n_out, T, seed=0):
    """LIF(n) with its defaults (tau_mem 20, threshold 0.03, surrogate height 10, its initial weights) and
    a linear readout, driven by input spikes at 0.2 per step: three quarters of the neurons fire, at 0.26
    (LIF(128)) to 0.38 (LIF(32)) spikes per step, so that most weights have a gradient."""
    model = ep.cells.stack(ep.cells.lif(n_in, n), ep.cells.readout(n, n_out))
    params = model.init(jax.random.key(seed))
    inputs = (jax.random.uniform(jax.random.key(seed + 1), (1, T, n_in)) < 0.2).astype(jnp.float32)
    return _checked(model, params, inputs, _targets(T, n_out))


def lif_hyper():
    """The hyperparameters of ``ep.cells.lif``'s defaults, for the braintrace side."""
    alpha = float(np.exp(-1.0 / 20.0))
    return dict(alpha=alpha, zeta=1.0 - alpha, threshold=0.03, height=10.0)


def gru_problem(n_in, n, n_out, T, seed=0):
    model = ep.cells.stack(ep.cells.gru(n_in, n), ep.cells.readout(n, n_out))
    params = model.init(jax.random.key(seed))
    cell = {}
    for i, (name, p) in enumerate(params[0].items()):
        p = dict(p)
        if name.startswith("h"):
            p["kernel"] = p["kernel"] * (1 - jnp.eye(n, dtype=p["kernel"].dtype))
        if "bias" in p:  # non-zero biases, so that their gradients are compared too
            p["bias"] = 0.1 * jax.random.normal(jax.random.key(seed + 10 + i), p["bias"].shape, jnp.float32)
        cell[name] = p
    params = (cell, params[1])
    k_x, k_y = jax.random.split(jax.random.key(seed + 1))
    # float32 throughout, stated: peers.py enables x64 (for NEST's float64 gradients), under which an
    # unstated dtype is float64 (before 2026-12-04 the inputs and biases were, and eproptax was timed
    # on a float64 sequence: 2.76 ms against 1.8 ms per GRU(128) sequence in float32)
    inputs = jax.random.normal(k_x, (1, T, n_in), jnp.float32)
    return _checked(model, params, inputs, _targets(T, n_out))


PROBLEMS = {"gru": gru_problem, "lif": lif_problem}


def named(tree) -> dict:
    """A network's parameters (or gradients) by the payload's names: ``w_out``, ``b_out``, and the cell's
    own, ``<layer>_<key>`` for a GRU's flax layers (``ir_kernel``), ``w_in`` and ``w_rec`` for a LIF."""
    cell, readout = tree
    out = {"w_out": np.asarray(readout["w_out"]), "b_out": np.asarray(readout["b_out"])}
    for name, value in cell.items():
        if isinstance(value, dict):
            out.update({f"{name}_{key}": np.asarray(v) for key, v in value.items()})
        else:
            out[name] = np.asarray(value)
    return out


def payload_of(cell, params, inputs, targets, repeats):
    extra = lif_hyper() if cell == "lif" else {}
    return dict(
        named(params), cell=cell, x=np.asarray(inputs[0]), y=np.asarray(targets["y"][0]), repeats=repeats, **extra
    )


def flat(grads: dict) -> np.ndarray:
    return np.concatenate([np.ravel(grads[name]) for name in sorted(grads)])


def compare_braintrace(exe, run_side, *, quick, log) -> list[dict]:
    rows = []
    for cell, n in (("gru", 32), ("lif", 32)) if quick else (("gru", 32), ("gru", 128), ("lif", 32), ("lif", 128)):
        n_in, n_out, T = 16, 2, 100
        model, params, inputs, targets = PROBLEMS[cell](n_in, n, n_out, T)
        # The two sides take turns (the peer's process, then ours, ROUNDS times) and each keeps its minimum:
        # timed once each, minutes apart, the ratio drifted by up to 2x on the shared machine.
        # eproptax is timed as a user calls it (the platform's defaults: unroll 1 and no chunks on the CPU),
        # with four steps per scan iteration (unroll=4, the fastest of 1, 2, 4 here in benchmarks/unroll.py)
        # and with the chunked view (chunk=T/2: two chunks; chunk=T: the whole sequence as one chunk, whose
        # coefficient buffers then grow with T); the speed-up reported is the default's, each variant's
        # beside it. Every variant's gradient is checked against the default's.
        options = {None: {}, 4: {"unroll": 4}, "chunk=T/2": {"chunk": T // 2}, "chunk=T": {"chunk": T}}
        fns = {u: jax.jit(ep.eprop(model, mse, **kw)) for u, kw in options.items()}
        _, g_ep = jax.block_until_ready(fns[None](params, inputs, targets))
        for u, fn in fns.items():
            _, g = jax.block_until_ready(fn(params, inputs, targets))
            diff = float(np.linalg.norm(flat(named(g)) - flat(named(g_ep))) / np.linalg.norm(flat(named(g_ep))))
            if diff > 1e-5:
                raise SystemExit(f"eproptax {options[u]} changed the gradient by {diff:.1e} (relative)")
        out, t_eps = None, {u: float("inf") for u in fns}
        for _ in range(1 if quick else ROUNDS):
            side = run_side(
                exe, "_braintrace_side.py", payload_of(cell, params, inputs, targets, repeats=5 if quick else 30)
            )
            if out is not None:
                for key in side:
                    if key.endswith("/seconds"):
                        side[key] = min(side[key], out[key])
            out = side
            for u, fn in fns.items():
                t_eps[u] = min(t_eps[u], _best_times(fn, params, inputs, targets, repeats=5)[0])
        t_ep = t_eps[None]
        _, g_bptt = jax.jit(ep.bptt(model, mse))(params, inputs, targets)
        ours = named(g_ep)
        ref, exact = flat(ours), flat(named(g_bptt))
        for algo in ("D_RTRL", "EProp"):
            g = flat({name: out[f"{algo}/{name}"] for name in ours})
            err = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
            t_peer = float(out[f"{algo}/seconds"])
            network = (
                f"GRU({n}) + linear readout, zero-diagonal recurrent kernels"
                if cell == "gru"
                else f"LIF({n}) + linear readout, reset detached, no autapses"
            )
            row = dict(
                name=f"braintrace {algo}",
                network=network,
                cell=cell,
                hidden=n,
                T=T,
                batch=1,
                dtype="float32",
                braintrace_version=str(out["braintrace_version"]),
                peer_jax=str(out["jax_version"]),
                peer_seconds=t_peer,
                peer_compile_s=float(out[f"{algo}/compile_s"]),
                eproptax_rule="eprop",
                eproptax_seconds=t_ep,
                speedup=t_peer / t_ep,
                required_speedup=1.0,
                eproptax_seconds_unroll4=t_eps[4],
                speedup_unroll4=t_peer / t_eps[4],
                eproptax_seconds_chunk_half=t_eps["chunk=T/2"],
                speedup_chunk_half=t_peer / t_eps["chunk=T/2"],
                eproptax_seconds_chunk_whole=t_eps["chunk=T"],
                speedup_chunk_whole=t_peer / t_eps["chunk=T"],
                relative_error_vs_eproptax=err,
                peer_relative_error_vs_bptt=float(np.linalg.norm(g - exact) / np.linalg.norm(exact)),
                eproptax_relative_error_vs_bptt=float(np.linalg.norm(ref - exact) / np.linalg.norm(exact)),
            )
            rows.append(row)
            log(
                f"  {row['name']} {row['braintrace_version']} on {cell.upper()}({n}), T={T}: {1e3 * t_peer:.2f} ms "
                f"vs eproptax eprop "
                f"{1e3 * t_ep:.2f} ms per sequence: x{t_peer / t_ep:.2f} (unroll=4: {1e3 * t_eps[4]:.2f} ms, "
                f"x{t_peer / t_eps[4]:.2f}; chunk=T/2: x{t_peer / t_eps['chunk=T/2']:.2f}; chunk=T: "
                f"x{t_peer / t_eps['chunk=T']:.2f}); gradient relative error {err:.1e}"
            )
    return rows
