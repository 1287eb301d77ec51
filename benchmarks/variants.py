"""Implementation choices measured on one device: the scan's ``unroll`` and ``formed_once``, per network.

The library makes two speed-only choices whose best value may depend on the device: ``lax.scan``'s
``unroll`` (default 1) and :func:`eproptax._jacobians.formed_once`, which keeps XLA's CPU backend from
re-evaluating the per-neuron blocks of level-0 e-prop in every per-synapse pass (docs/design.md). For the
networks of targets 2, 3 and 4 and two small ones, this script times each variant as the slope between
T = 10 and T = 40 (the cost of one more step, as ``targets.py`` does), all programs of a network compiled
first and then timed in interleaved rounds. ``no formed_once`` replaces the function by the identity for
that program only; it applies to the e-prop rows. ``--hlo`` also writes the optimised HLO of the target-3
ALIF program (default variant), to see the compiled step's kernels and copies.

Writes ``variants.json`` (and ``hlo_alif_eprop.txt``) to ``benchmarks/results/<device>/``.

    python benchmarks/variants.py [--quick] [--hlo]
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_slopes, parser, results_dir, save  # noqa: E402

import eproptax._tricks as _tricks  # noqa: E402
from eproptax._bench import RULES, build, problem  # noqa: E402

SPECS = {spec.name: spec for spec in RULES}
LENGTHS = (10, 40)


@contextlib.contextmanager
def without_formed_once():
    saved = _tricks.formed_once
    _tricks.formed_once = lambda tree: tree
    try:
        yield
    finally:
        _tricks.formed_once = saved


def variants(name):
    yield "default", {}, contextlib.nullcontext
    for u in (2, 4, 8):
        yield f"unroll={u}", dict(unroll=u), contextlib.nullcontext
    if SPECS[name].kind == "traces":
        yield "no formed_once", {}, without_formed_once


def cases(quick):
    big = dict(hidden=64, batch=8) if quick else dict(hidden=256, batch=32)
    for cell in ("lif", "alif", "lstm"):
        yield cell, "eprop (leaky readout)", big
    yield "lif", "forward", big
    yield "lif", "eprop (stateless readout)", big
    yield "lif", "forward (stateless readout)", big
    yield "lif", "rtrl", dict(hidden=32 if quick else 64, batch=8)
    yield "gru", "eprop (leaky readout)", dict(hidden=16, batch=8)
    yield "lif", "bptt", dict(hidden=16, batch=8)


def compile_all(cell, name, sizes):
    spec, programs = SPECS[name], {}
    for label, options, context in variants(name):
        for T in LENGTHS:
            prob = problem(cell, readout=spec.readout, layers=spec.layers, time_steps=T, **sizes)
            call = (prob.params, prob.inputs, prob.targets)
            with context():
                compiled = jax.jit(build(spec, prob, **options)[0]).lower(*call).compile()
            jax.block_until_ready(compiled(*call))
            programs[(label, T)] = (compiled, call)
    return programs


def main(argv=None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--hlo", action="store_true", help="also write the target-3 ALIF program's optimised HLO")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    start, rows = time.perf_counter(), []
    if args.hlo:
        cell, name, sizes = next(c for c in cases(args.quick) if c[0] == "alif")
        spec = SPECS[name]
        prob = problem(cell, readout=spec.readout, time_steps=LENGTHS[0], **sizes)
        text = jax.jit(build(spec, prob)[0]).lower(prob.params, prob.inputs, prob.targets).compile().as_text()
        with open(os.path.join(results_dir(args.out), "hlo_alif_eprop.txt"), "w") as f:
            f.write(text)
    for cell, name, sizes in cases(args.quick):
        slope, best = interleaved_slopes(compile_all(cell, name, sizes), LENGTHS, args.rounds)
        rows.append(
            dict(
                cell=cell,
                rule=name,
                **sizes,
                lengths=LENGTHS,
                per_step_s=slope,
                whole_call_per_step_s={label: best[(label, LENGTHS[1])] / LENGTHS[1] for label in slope},
            )
        )
        text = "  ".join(f"{label} {1e6 * s:7.1f}" for label, s in slope.items())
        print(f"{cell:5s} {name:28s} h{sizes['hidden']:<4d} b{sizes['batch']:<3d} us/step: {text}", flush=True)
        save("variants", dict(rows=rows, seconds=time.perf_counter() - start), args.out)  # kept if cut short
    print(f"wrote {os.path.join(results_dir(args.out), 'variants.json')} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
