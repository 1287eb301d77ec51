"""A/B: the working tree's eproptax against a git revision's, interleaved in one process.

Question: is a change to the library faster or slower, per network, and does it change the gradients?
The revision's ``eproptax/`` (``git archive``) is imported beside the working tree's as ``eproptax_<rev>``
(the package imports itself relatively, so both load in one process), each network's rule is built and
compiled by each package's own ``_bench`` at two sequence lengths, and the four programs are timed in
interleaved rounds: the per-step slope ``(t(T2) - t(T1)) / (T2 - T1)`` of each side, their ratio (above 1:
the working tree is faster), the compile time of each side (process CPU seconds, both lengths) and the largest
difference of the gradients relative to the revision's. ``--all`` runs every network of ``eproptax bench
--full`` and of ``benchmarks/targets.py``. On
this project's VM only ratios from one process count (benchmarks/README.md, "The machine").

    python benchmarks/ab.py --rev HEAD --net gru:"eprop (stateless readout)":32:8 \
        --net alif:"eprop (leaky readout)":256:32
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HERE, interleaved_slopes  # noqa: E402

import eproptax._bench  # noqa: E402

DEFAULT_NETS = (
    "gru:eprop (stateless readout):32:8",
    "lstm:eprop (leaky readout):64:8",
    "alif:eprop (leaky readout):256:32",
)


def import_revision(rev: str, into: str):
    """``eproptax`` at ``rev``, imported as ``eproptax_<rev>`` from a ``git archive`` under ``into``."""
    name = "eproptax_" + "".join(c if c.isalnum() else "_" for c in rev)
    archive = subprocess.run(
        ["git", "-C", os.path.dirname(HERE), "archive", rev, "eproptax"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    os.rename(os.path.join(into, "eproptax"), os.path.join(into, name))
    sys.path.insert(0, into)
    return importlib.import_module(name + "._bench")


def compiled_pair(bench, cell, rule, hidden, batch, lengths):
    """``{T: (compiled, call, gradients, compile CPU seconds)}`` of one package's rule at each length."""
    spec = {s.name: s for s in bench.RULES}[rule]
    out = {}
    for T in lengths:
        prob = bench.problem(cell, readout=spec.readout, layers=spec.layers, hidden=hidden, batch=batch, time_steps=T)
        fn, _ = bench.build(spec, prob)
        args = (prob.params, prob.inputs, prob.targets)
        lowered = jax.jit(fn).lower(*args)
        start = time.process_time()
        compiled = lowered.compile()
        seconds = time.process_time() - start
        result = jax.block_until_ready(compiled(*args))
        grads = result[1] if isinstance(result, tuple) else result  # a loss for the forward pass
        out[T] = (compiled, args, grads, seconds)
    return out


def all_networks(bench) -> list[str]:
    """Every network of ``eproptax bench --full`` (hidden 16, batch 8) and of ``benchmarks/targets.py``."""
    from identical import CELLS, TARGETS

    nets = [f"{cell}:{spec.name}:16:8" for cell in CELLS for spec in bench.RULES]
    return nets + [f"{cell}:{rule}:{sizes['hidden']}:{sizes['batch']}" for cell, rule, sizes in TARGETS]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="HEAD", help="the git revision to compare against")
    p.add_argument("--net", action="append", help="cell:rule:hidden:batch (repeatable)")
    p.add_argument("--lengths", type=int, nargs=2, default=(20, 60))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--all", action="store_true", help="every network of bench --full and targets.py")
    args = p.parse_args(argv)
    worst = dict(step=1.0, compile=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {args.rev: import_revision(args.rev, tmp), "tree": eproptax._bench}
        for net in all_networks(eproptax._bench) if args.all else args.net or DEFAULT_NETS:
            cell, rule, hidden, batch = net.split(":")
            progs = {
                side: compiled_pair(bench, cell, rule, int(hidden), int(batch), args.lengths)
                for side, bench in sides.items()
            }
            base, new = (jax.tree_util.tree_leaves(progs[side][args.lengths[1]][2]) for side in sides)
            diff = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(a))) + 1e-30))
                for a, b in zip(base, new)
            )
            timed = {(side, T): (fn, call) for side, pair in progs.items() for T, (fn, call, *_) in pair.items()}
            slope, best = interleaved_slopes(timed, args.lengths, args.rounds, repeats=3)
            t2 = args.lengths[1]
            compile_s = {side: sum(pair[T][3] for T in args.lengths) for side, pair in progs.items()}
            step_ratio, compile_ratio = slope[args.rev] / slope["tree"], compile_s[args.rev] / compile_s["tree"]
            worst = dict(step=min(worst["step"], step_ratio), compile=min(worst["compile"], compile_ratio))
            print(
                f"{cell}({hidden}) b{batch} {rule}: {args.rev} {1e6 * slope[args.rev]:.2f} us/step, tree "
                f"{1e6 * slope['tree']:.2f}: x{step_ratio:.2f} (whole call at T={t2}: "
                f"x{best[args.rev, t2] / best['tree', t2]:.2f}); compile (CPU s) {compile_s[args.rev]:.2f} vs "
                f"{compile_s['tree']:.2f}: x{compile_ratio:.2f}; gradients differ by {diff:.1e} (relative)",
                flush=True,
            )
    print(
        f"slowest ratios (above 1: the tree is faster): per step x{worst['step']:.2f}, compile x{worst['compile']:.2f}"
    )


if __name__ == "__main__":
    main()
