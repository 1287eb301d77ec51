"""The eproptax side of the braintrace comparison (used by ``peers.py``; the peer side is ``_braintrace_side.py``).

Networks: eproptax's reset-after GRU (flax's ``GRUCell``) and its LIF (NEST's, reset detached, no
autapses), each with a stateless linear readout, one sequence (braintrace's learners run unbatched),
float32. The GRU's recurrent kernels get a zero diagonal (once needed because braintrace's D-RTRL kept a
neuron's own recurrent weight in its Jacobian; 0.2.8's ``D_RTRL``, ``recurrence_scope='diagonal'``, drops
it as e-prop does, and its ``SnAp(n=1)`` keeps it as ``ep.snap(n=1)`` does: both pairs agree on the GRU
with its diagonal too, which the SnAp-1 rows report under ``with_autapses``). The LIF has none by
construction (its ``w_rec`` diagonal is masked on both sides), and with the reset detached its Jacobian
diagonal is ``alpha``, e-prop's.

Each braintrace algorithm is compared with the eproptax rule that computes the same gradient (``RULES``):

* ``D_RTRL``, ``EProp`` (no filter): ``ep.eprop``;
* ``SnAp(n=1)``: ``ep.snap(n=1)`` (D-RTRL with each neuron's autapse; here none, so also e-prop);
* ``SnAp(n=2)``: ``ep.snap(n=2)`` (the two-step pattern of a dense recurrent layer is all-to-all, so both
  are RTRL's gradient, which is BPTT's to rounding);
* ``pp_prop`` (ES-D-RTRL, LIF only) with ``decay_or_rank=(alpha, 0)``: ``ep.pp_prop`` at its default
  decays, the same pair, which is also ``ep.eprop`` on this LIF (its Jacobian diagonal is the constant
  ``alpha`` and ``d v / d (W x)`` the constant ``zeta``, so e-prop's trace factorizes exactly); its
  one-decay form ``decay_or_rank=alpha`` is compared with ``ep.pp_prop(decay=alpha)`` beside it;
* ``pp_prop_half`` (both cells), ``decay_or_rank=0.5``: ``ep.pp_prop(decay=0.5)``, on the weights (a GRU's
  biases differ by convention: braintrace gives a bias the postsynaptic trace alone, eproptax treats it
  as a weight on the constant 1, its presynaptic trace filtered; their error is reported beside it);
* ``UORO``: ``ep.uoro``. Random: each key gives another estimate and the two libraries draw their signs
  differently, so the gradients are not compared key for key; instead the mean over ``UORO_KEYS`` keys of
  each is compared with BPTT's gradient (both are unbiased for RTRL's), with the mean over a quarter of
  the keys (twice as far, for an unbiased estimate) and one key's median error beside it.

Reported: the gradients' relative error against eproptax's (and each one's against BPTT), and the time per
sequence of the jitted functions after compilation (the minimum over ``ROUNDS`` turns of each side,
interleaved; SnAp-2 in the first turn only).
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


def gru_problem(n_in, n, n_out, T, seed=0, autapses=False):
    """The GRU with zero-diagonal recurrent kernels (with ``autapses``: its initial ones, diagonal kept)."""
    model = ep.cells.stack(ep.cells.gru(n_in, n), ep.cells.readout(n, n_out))
    params = model.init(jax.random.key(seed))
    cell = {}
    for i, (name, p) in enumerate(params[0].items()):
        p = dict(p)
        if name.startswith("h") and not autapses:
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


# braintrace's algorithms (``_braintrace_side.py``'s names) -> the eproptax rule each is compared with
RULES = {
    "D_RTRL": "eprop",
    "EProp": "eprop",
    "SnAp1": "snap(n=1)",
    "SnAp2": "snap(n=2)",
    "UORO": "uoro",
    "pp_prop": "pp_prop",
    "pp_prop_half": "pp_prop(decay=0.5)",
}
EXPENSIVE = ("SnAp2",)  # RTRL's influence: measured in the first round only (both sides)
TITLES = {
    "SnAp1": "SnAp-1",
    "SnAp2": "SnAp-2",
    "pp_prop": "pp_prop (decay (alpha, 0))",
    "pp_prop_half": "pp_prop (decay 0.5)",
}
UORO_KEYS = 256


def _eproptax_fns(model, T, cell):
    """The jitted eproptax rules by name (``uoro`` at ``key = 0``; the rule itself is returned too), and
    e-prop's variants timed beside its default: four steps per scan iteration (``unroll=4``, the fastest of
    1, 2, 4 here in ``benchmarks/unroll.py``) and the chunked view (``chunk=T/2``: two chunks; ``chunk=T``:
    the whole sequence as one chunk, whose coefficient buffers then grow with ``T``)."""
    fns = {
        "eprop": ep.eprop(model, mse),
        "eprop unroll=4": ep.eprop(model, mse, unroll=4),
        "eprop chunk=T/2": ep.eprop(model, mse, chunk=T // 2),
        "eprop chunk=T": ep.eprop(model, mse, chunk=T),
        "snap(n=1)": ep.snap(model, mse, 1),
        "snap(n=2)": ep.snap(model, mse, 2),
        "pp_prop": ep.pp_prop(model, mse),
        "pp_prop(decay=0.5)": ep.pp_prop(model, mse, 0.5),
    }
    if cell == "lif":
        fns["pp_prop(decay=alpha)"] = ep.pp_prop(model, mse, lif_hyper()["alpha"])
    uoro = ep.uoro(model, mse)
    fns["uoro"] = lambda p, x, y: uoro(p, x, y, key=jax.random.key(0))
    return {name: jax.jit(fn) for name, fn in fns.items()}, uoro


def _uoro_estimates(uoro, params, inputs, targets, keys, chunk=32):
    """eproptax's UORO gradients for ``keys`` random keys, flattened: ``(keys, |theta|)``."""
    batched = jax.jit(jax.vmap(lambda key: uoro(params, inputs, targets, key=key)[1]))
    all_keys = jax.random.split(jax.random.key(1), keys)
    out = []
    for start in range(0, keys, chunk):
        grads = batched(all_keys[start : start + chunk])
        for k in range(min(chunk, keys - start)):
            out.append(flat(named(jax.tree_util.tree_map(lambda a: a[k], grads))))  # noqa: B023 (used at once)
    return np.stack(out[:keys])


def _autapses(exe, run_side, n_in, n, n_out, T) -> dict:
    """SnAp-1 and D-RTRL on the GRU with its recurrent kernels' diagonal (the autapses), where SnAp-1 (each
    neuron's own recurrent weight kept in its Jacobian) and D-RTRL / e-prop (dropped) differ: the
    gradients' relative errors, braintrace's against eproptax's."""
    model, params, inputs, targets = gru_problem(n_in, n, n_out, T, autapses=True)
    payload = payload_of("gru", params, inputs, targets, repeats=1)
    out = run_side(exe, "_braintrace_side.py", dict(payload, algorithms="SnAp1,D_RTRL"))
    ours = {
        name: named(jax.jit(rule)(params, inputs, targets)[1])
        for name, rule in (("eprop", ep.eprop(model, mse)), ("snap(n=1)", ep.snap(model, mse, 1)))
    }
    peer = {a: flat({name: out[f"{a}/{name}"] for name in ours["eprop"]}) for a in ("SnAp1", "D_RTRL")}
    return {
        "SnAp1_vs_snap(n=1)": _rel(peer["SnAp1"], flat(ours["snap(n=1)"])),
        "SnAp1_vs_eprop": _rel(peer["SnAp1"], flat(ours["eprop"])),
        "D_RTRL_vs_eprop": _rel(peer["D_RTRL"], flat(ours["eprop"])),
        "snap(n=1)_vs_eprop": _rel(flat(ours["snap(n=1)"]), flat(ours["eprop"])),
    }


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare_braintrace(exe, run_side, *, quick, log) -> list[dict]:
    rows = []
    for cell, n in (("gru", 32), ("lif", 32)) if quick else (("gru", 32), ("gru", 128), ("lif", 32), ("lif", 128)):
        n_in, n_out, T = 16, 2, 100
        model, params, inputs, targets = PROBLEMS[cell](n_in, n, n_out, T)
        algos = [a for a in RULES if a != "pp_prop" or cell == "lif"]
        side_algos = algos + (["pp_prop_symmetric"] if cell == "lif" else [])
        # The two sides take turns (the peer's process, then ours, ROUNDS times) and each keeps its minimum:
        # timed once each, minutes apart, the ratio drifted by up to 2x on the shared machine. SnAp-2 (RTRL's
        # influence, seconds per sequence at 128 neurons) is timed in the first round only, on both sides.
        # eproptax is timed as a user calls it (the platform's defaults: unroll 1 and no chunks on the CPU);
        # the speed-up reported is the default's, e-prop's variants' beside it, each checked to give the
        # default's gradient.
        fns, uoro = _eproptax_fns(model, T, cell)
        grads = {u: named(jax.block_until_ready(fn(params, inputs, targets))[1]) for u, fn in fns.items()}
        for u in fns:
            diff = _rel(flat(grads[u]), flat(grads["eprop"]))
            if u.startswith("eprop") and diff > 1e-5:
                raise SystemExit(f"eproptax {u} changed the gradient by {diff:.1e} (relative)")
        out, t_eps = None, {u: float("inf") for u in fns}
        for r in range(1 if quick else ROUNDS):
            names = [a for a in side_algos if r == 0 or a not in EXPENSIVE]
            payload = payload_of(cell, params, inputs, targets, repeats=5 if quick else 30)
            payload.update(algorithms=",".join(names), uoro_keys=(64 if quick else UORO_KEYS) if r == 0 else 0)
            side = run_side(exe, "_braintrace_side.py", payload)
            if out is not None:
                for key in side:
                    if key.endswith("/seconds"):
                        side[key] = min(side[key], out[key])
                out.update(side)
            else:
                out = side
            for u, fn in fns.items():
                if r == 0 or u not in (RULES[a] for a in EXPENSIVE):
                    t_eps[u] = min(t_eps[u], _best_times(fn, params, inputs, targets, repeats=5)[0])
        _, g_bptt = jax.jit(ep.bptt(model, mse))(params, inputs, targets)
        exact_named = named(g_bptt)
        exact = flat(exact_named)
        names_ = sorted(grads["eprop"])
        network = (
            f"GRU({n}) + linear readout, zero-diagonal recurrent kernels"
            if cell == "gru"
            else f"LIF({n}) + linear readout, reset detached, no autapses"
        )
        K = 64 if quick else UORO_KEYS
        for algo in algos:
            rule = RULES[algo]
            ref = flat(grads[rule])
            weights = [n for n in names_ if not (algo == "pp_prop_half" and n.endswith("_bias"))]
            g, ref = flat({name: out[f"{algo}/{name}"] for name in weights}), flat({n: grads[rule][n] for n in weights})
            t_peer, t_ep = float(out[f"{algo}/seconds"]), t_eps[rule]
            row = dict(
                name=f"braintrace {TITLES.get(algo, algo)}",
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
                eproptax_rule=rule,
                eproptax_seconds=t_ep,
                speedup=t_peer / t_ep,
                required_speedup=1.0,
            )
            if rule == "eprop":
                for key, u in (
                    ("unroll4", "eprop unroll=4"),
                    ("chunk_half", "eprop chunk=T/2"),
                    ("chunk_whole", "eprop chunk=T"),
                ):
                    row[f"eproptax_seconds_{key}"], row[f"speedup_{key}"] = t_eps[u], t_peer / t_eps[u]
            variants = (
                f" (unroll=4: {1e3 * t_eps['eprop unroll=4']:.2f} ms, x{t_peer / t_eps['eprop unroll=4']:.2f}; "
                f"chunk=T/2: x{t_peer / t_eps['eprop chunk=T/2']:.2f}; chunk=T: x{t_peer / t_eps['eprop chunk=T']:.2f})"
                if rule == "eprop"
                else ""
            )
            if algo == "UORO":
                # Random: another key, another estimate, and the two libraries draw their signs differently
                # (brainstate's RandomState per hidden group against jax.random per example), so no two
                # estimates are comparable. Both are unbiased for RTRL's gradient (BPTT's, to rounding): the
                # mean over K keys must approach it as 1/sqrt(K), the first K/4 keys' mean about twice as far.
                ours = _uoro_estimates(uoro, params, inputs, targets, K)
                theirs_single = [
                    flat({name: out[f"UORO/single/{name}"][k] for name in names_})
                    for k in range(out[f"UORO/single/{names_[0]}"].shape[0])
                ]
                mean = {
                    "braintrace": _rel(flat({name: out[f"UORO/mean/{name}"] for name in names_}), exact),
                    "eproptax": _rel(ours.mean(0), exact),
                }
                quarter = {
                    "braintrace": _rel(flat({name: out[f"UORO/mean_quarter/{name}"] for name in names_}), exact),
                    "eproptax": _rel(ours[: max(1, K // 4)].mean(0), exact),
                }
                single = {
                    "braintrace": float(np.median([_rel(x, exact) for x in theirs_single])),
                    "eproptax": float(np.median([_rel(x, exact) for x in ours[: len(theirs_single)]])),
                }
                row.update(
                    uoro_keys=K,
                    relative_error_vs_eproptax=None,
                    gradient_note="random estimates, not comparable key for key: the mean over keys of each "
                    "library's is compared with BPTT's gradient (RTRL's, to rounding)",
                    mean_relative_error_vs_bptt=mean,
                    mean_quarter_keys_relative_error_vs_bptt=quarter,
                    single_key_median_relative_error_vs_bptt=single,
                )
                rows.append(row)
                log(
                    f"  {row['name']} {row['braintrace_version']} on {cell.upper()}({n}), T={T}: "
                    f"{1e3 * t_peer:.2f} ms vs eproptax uoro {1e3 * t_ep:.2f} ms per sequence: x{t_peer / t_ep:.2f}; "
                    f"not comparable key for key (random signs); relative error vs BPTT of the mean over "
                    f"{K} keys: braintrace {mean['braintrace']:.2f}, eproptax {mean['eproptax']:.2f} (over "
                    f"{max(1, K // 4)} keys: {quarter['braintrace']:.2f}, {quarter['eproptax']:.2f}; one key, "
                    f"median: {single['braintrace']:.1f}, {single['eproptax']:.1f})"
                )
                continue
            err, exact_w = _rel(g, ref), flat({n: exact_named[n] for n in weights})
            row.update(
                relative_error_vs_eproptax=err,
                peer_relative_error_vs_bptt=_rel(g, exact_w),
                eproptax_relative_error_vs_bptt=_rel(ref, exact_w),
            )
            if algo == "SnAp1" and cell == "gru":
                row["with_autapses"] = autapses = _autapses(exe, run_side, n_in, n, n_out, T)
                variants = (
                    f" (GRU with its recurrent kernels' diagonal: SnAp-1 vs snap(n=1) "
                    f"{autapses['SnAp1_vs_snap(n=1)']:.1e}, vs eprop {autapses['SnAp1_vs_eprop']:.1e}; "
                    f"D_RTRL vs eprop {autapses['D_RTRL_vs_eprop']:.1e})"
                )
            if algo == "pp_prop":
                sym = flat({name: out[f"pp_prop_symmetric/{name}"] for name in names_})
                ours_sym = flat(grads["pp_prop(decay=alpha)"])
                row.update(
                    pp_prop_decay=[float(lif_hyper()["alpha"]), 0.0],
                    relative_error_vs_eprop=_rel(g, flat(grads["eprop"])),
                    relative_error_one_decay_alpha=_rel(sym, ours_sym),
                )
                variants = (
                    f" (vs eprop {_rel(g, flat(grads['eprop'])):.1e}; one decay, alpha on both sides, vs "
                    f"pp_prop(decay=alpha): {_rel(sym, ours_sym):.1e})"
                )
            if algo == "pp_prop_half" and len(weights) < len(names_):
                biases = [n for n in names_ if n not in weights]
                b_peer, b_ours = (
                    flat({n: src[n] for n in biases}) for src in ({n: out[f"{algo}/{n}"] for n in biases}, grads[rule])
                )
                row["biases_relative_error"] = _rel(b_peer, b_ours)
                variants = f" (weights; the GRU's biases, another convention: {_rel(b_peer, b_ours):.1e})"
            rows.append(row)
            log(
                f"  {row['name']} {row['braintrace_version']} on {cell.upper()}({n}), T={T}: {1e3 * t_peer:.2f} ms "
                f"vs eproptax {rule} {1e3 * t_ep:.2f} ms per sequence: x{t_peer / t_ep:.2f}{variants}; "
                f"gradient relative error {err:.1e}"
            )
    return rows
