"""Are the working tree's gradients bit for bit those of a git revision? Both packages in one process.

Question: does a change to the library (a refactoring, a speed trick) change any gradient? The revision's
``eproptax/`` is imported beside the working tree's as ``eproptax_<rev>`` (as ``ab.py`` does), and every
rule of ``eproptax bench --full`` (every cell, both readouts, one and two layers, at the bench's default
sizes) and every network of ``benchmarks/targets.py`` is run by each package's own ``_bench``, in
float32 and in float64 (each dtype in its own process, so that float32 runs without ``jax_enable_x64``).
For each it prints whether the loss and every gradient leaf are bitwise equal, the largest relative
difference otherwise, and whether the two programs' jaxprs are the same text. It exits 1 if any gradient
differs by more than ``--tolerance`` (0: bitwise) relative in float64.

    python benchmarks/identical.py --rev 51a0ae2 [--dtype float32|float64] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CELLS = ("lif", "alif", "lstm", "gru")
BENCH = dict(n_in=16, hidden=16, time_steps=100, batch=8)
# (cell, rule, sizes) of benchmarks/targets.py: memory (1), forward ratio (2), bandwidth (3), RTRL (4)
TARGETS = [
    ("lif", r, dict(hidden=32, batch=8, time_steps=100))
    for r in ("eprop (leaky readout)", "eprop (stateless readout)", "eprop_m(1)", "deep_eprop(full)", "bptt")
]
TARGETS += [("lif", "eprop (stateless readout)", dict(hidden=256, batch=32, time_steps=100))]
TARGETS += [
    (c, r, dict(hidden=256, batch=32, time_steps=40))
    for c, r in (
        ("lif", "eprop (leaky readout)"),
        ("alif", "eprop (leaky readout)"),
        ("lstm", "eprop (leaky readout)"),
        ("alif", "eprop (stateless readout)"),
        ("lstm", "eprop (stateless readout)"),
    )
]
TARGETS += [
    ("lif", "rtrl", dict(hidden=64, batch=8, time_steps=20)),
    ("gru", "rtrl", dict(hidden=32, batch=8, time_steps=20)),
]


def networks(bench, quick: bool):
    """``(cell, rule name, sizes)`` of every network checked."""
    names = [spec.name for spec in bench.RULES]
    nets = [(cell, name, BENCH) for cell in CELLS for name in names]
    nets += TARGETS
    if quick:
        nets = [(c, n, dict(s, time_steps=min(s["time_steps"], 20), hidden=min(s["hidden"], 32))) for c, n, s in nets]
    return nets


def run_one(bench, cell, name, sizes, dtype):
    """The rule's ``(loss, grads)`` and its jaxpr text, by one package's ``_bench``."""
    import jax

    spec = {s.name: s for s in bench.RULES}[name]
    prob = bench.problem(cell, readout=spec.readout, layers=spec.layers, dtype=dtype, **sizes)
    fn, _ = bench.build(spec, prob)
    args = (prob.params, prob.inputs, prob.targets)
    out = jax.block_until_ready(jax.jit(fn)(*args))
    return out, str(jax.make_jaxpr(fn)(*args))


def compare(dtype_name: str, rev: str, quick: bool, tolerance: float) -> int:
    import jax

    if dtype_name == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from ab import import_revision

    import eproptax._bench

    dtype = getattr(jnp, dtype_name)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(rev, tmp)
        for cell, name, sizes in networks(eproptax._bench, quick):
            (a, ja), (b, jb) = (run_one(bench, cell, name, sizes, dtype) for bench in (old, eproptax._bench))
            leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
            same = len(leaves_a) == len(leaves_b) and all(
                np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)
            )
            diff = (
                0.0
                if same
                else max(
                    float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-300))
                    for x, y in zip(leaves_a, leaves_b)
                )
            )
            worst = max(worst, diff)
            label = f"{cell}({sizes['hidden']}) b{sizes['batch']} T={sizes['time_steps']} {name}"
            verdict = "bitwise" if same else f"differs by {diff:.1e}"
            print(f"{dtype_name} {label:60s} {verdict:22s} jaxpr {'same' if ja == jb else 'differs'}", flush=True)
    print(f"{dtype_name}: largest relative difference {worst:.1e}")
    return int(
        dtype_name == "float64" and worst > tolerance or dtype_name == "float32" and worst > 0 and tolerance == 0
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="HEAD", help="the git revision to compare against")
    p.add_argument("--dtype", choices=("float32", "float64"), help="one dtype (default: both, one process each)")
    p.add_argument("--quick", action="store_true", help="every network at T <= 20 and hidden <= 32")
    p.add_argument("--tolerance", type=float, default=0.0, help="largest relative difference allowed (float64)")
    args = p.parse_args(argv)
    if args.dtype:
        return compare(args.dtype, args.rev, args.quick, args.tolerance)
    codes = []
    for dtype in ("float32", "float64"):
        command = [sys.executable, __file__, "--rev", args.rev, "--dtype", dtype, "--tolerance", str(args.tolerance)]
        codes.append(subprocess.run(command + (["--quick"] if args.quick else [])).returncode)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
