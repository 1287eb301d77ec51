"""What the scan's ``unroll`` buys each rule: time per step and compile time at 1, 2 and 4 steps per iteration.

Every rule takes ``unroll`` (``lax.scan``'s): the gradient is the same up to rounding, the speed is not.
This sweep is the measurement behind the default (1, ``lax.scan``'s: no value wins everywhere; docs/design.md):
the bench's default networks (hidden 16, batch 8, T = 100) on every cell, a single sequence of a GRU (the
braintrace comparison of ``peers.py``), and the per-synapse trace networks of target 3 (hidden 256, batch 32).
The three programs of a row are compiled first and then timed in interleaved rounds (minimum per program),
so that the machine's drift during the run does not favour one of them. Writes ``unroll.json`` and
``unroll.png`` to ``benchmarks/results/<device>/``.

    python benchmarks/unroll.py [--quick]
"""

from __future__ import annotations

import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, pyplot, results_dir, save, save_figure, title  # noqa: E402

from eproptax._bench import CELLS, RULES, build, problem  # noqa: E402

SPECS = {spec.name: spec for spec in RULES}
UNROLLS = (1, 2, 4)
SMALL = (
    "bptt",
    "rtrl",
    "eprop (leaky readout)",
    "eprop (stateless readout)",
    "eprop_m(1)",
    "deep_eprop(spatial)",
    "deep_eprop(full)",
)


def cases(quick):
    small = dict(hidden=16, batch=8, time_steps=100)
    for cell in ("lif", "gru") if quick else CELLS:
        for name in SMALL:
            yield cell, name, small
    for hidden in (32,) if quick else (32, 128):
        yield "gru", "eprop (stateless readout)", dict(hidden=hidden, batch=1, time_steps=100)
    if not quick:
        for cell in ("alif", "lstm"):
            yield cell, "eprop (leaky readout)", dict(hidden=256, batch=32, time_steps=20)


def interleaved_best(programs: dict, args, rounds: int = 7, runs: int = 3) -> dict:
    """Minimum wall time of each compiled program over ``rounds`` rounds of ``runs`` calls, the programs
    taking turns within each round."""
    best = {key: float("inf") for key in programs}
    for _ in range(rounds):
        for key, compiled in programs.items():
            for _ in range(runs):
                start = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                best[key] = min(best[key], time.perf_counter() - start)
    return best


def main(argv=None):
    args = parser(__doc__.split("\n")[0]).parse_args(argv)
    start, rows = time.perf_counter(), []
    for cell, name, sizes in cases(args.quick):
        spec = SPECS[name]
        prob = problem(cell, readout=spec.readout, layers=spec.layers, **sizes)
        call = (prob.params, prob.inputs, prob.targets)
        programs, compile_s = {}, {}
        for unroll in UNROLLS:
            begin = time.perf_counter()
            programs[unroll] = jax.jit(build(spec, prob, unroll=unroll)[0]).lower(*call).compile()
            compile_s[unroll] = time.perf_counter() - begin
            jax.block_until_ready(programs[unroll](*call))
        best = interleaved_best(programs, call)
        row = dict(
            cell=cell,
            rule=name,
            **sizes,
            per_step_s={u: best[u] / sizes["time_steps"] for u in UNROLLS},
            compile_s=compile_s,
        )
        rows.append(row)
        times = "  ".join(f"u{u} {1e6 * row['per_step_s'][u]:9.1f} us ({compile_s[u]:4.1f} s)" for u in UNROLLS)
        print(f"{cell:5s} {name:27s} h{sizes['hidden']:<4d} b{sizes['batch']:<3d} {times}", flush=True)
    path = save("unroll", dict(rows=rows, unrolls=UNROLLS, seconds=time.perf_counter() - start), args.out)
    plot(rows, os.path.join(results_dir(args.out), "unroll.png"))
    print(f"wrote {path} ({time.perf_counter() - start:.0f} s)")


def plot(rows, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    labels = [f"{r['cell']} {r['rule']} (h{r['hidden']}, b{r['batch']})" for r in rows]
    for i, u in enumerate(UNROLLS[1:]):
        speedup = [r["per_step_s"][1] / r["per_step_s"][u] for r in rows]
        ax.barh([j + 0.4 * i for j in range(len(rows))], speedup, height=0.4, label=f"unroll={u}")
    ax.set_yticks([j + 0.2 for j in range(len(rows))], labels, fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over unroll=1 (time per step)")
    ax.legend()
    save_figure(fig, path, title("lax.scan unroll: time per step against unroll=1"), fontsize=9)


if __name__ == "__main__":
    main()
