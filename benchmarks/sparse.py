"""Does e-prop's cost follow the number of synapses? The gathered layout against the dense one.

A LIF layer with fixed fan-in masks on its inputs (64) and its recurrent weights (no autapses), a leaky
readout of 4, batch 16, float32, ``ep.eprop``. Per network it prints XLA's temporaries plus outputs of the
compiled program (T = 50) and the cost of one more step (``(t(T2) - t(T1)) / (T2 - T1)``, T = 20 and 50, the
two layouts' programs timed in interleaved rounds), for the gathered layout (the default for a sparse layer)
and the dense one (``_plan.SPARSE_FRACTION = 0``), and their ratios. The first rows sweep the connectivity at
1024 neurons (the issue's target network is the 10% row), the others the size at 10%. Dense programs whose
trace would pass ``--max-dense-mib`` are compiled for their memory but not timed. Prints a Markdown table.

    PYTHONPATH=. python benchmarks/sparse.py [--quick] [--rounds 3] [--networks 4096:0.1 ...]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_slopes  # noqa: E402

import eproptax as ep  # noqa: E402
import eproptax._plan as plan  # noqa: E402

N_IN, N_OUT, BATCH, LENGTHS = 64, 4, 16, (20, 50)


def network(n: int, p: float):
    k1, k2 = jax.random.split(jax.random.key(0))
    m_in = ep.cells.fan_in_mask(k1, (n, N_IN), max(1, round(p * N_IN)))
    m_rec = ep.cells.fan_in_mask(k2, (n, n), max(1, min(n - 1, round(p * n))), autapses=False)
    model = ep.cells.stack(ep.cells.lif(N_IN, n, mask_in=m_in, mask_rec=m_rec), ep.cells.leaky_readout(n, N_OUT))
    return model, model.init(jax.random.key(1))


def mse(out, target):
    return jnp.sum((out - target) ** 2)


def measure(n: int, p: float, rounds: int, max_dense_mib: float) -> dict:
    model, params = network(n, p)
    programs, memory = {}, {}
    for label, fraction in (("gathered", plan.SPARSE_FRACTION), ("dense", 0.0)):
        saved, plan.SPARSE_FRACTION = plan.SPARSE_FRACTION, fraction
        try:
            fn = jax.jit(ep.eprop(model, mse))
        finally:
            plan.SPARSE_FRACTION = saved
        for T in reversed(LENGTHS):  # the longer first: its memory decides whether a dense program is timed
            x = (jax.random.uniform(jax.random.key(2), (BATCH, T, N_IN)) < 0.05).astype(jnp.float32)
            call = (params, x, jnp.zeros((BATCH, T, N_OUT)))
            compiled = fn.lower(*call).compile()
            if T == LENGTHS[-1]:
                analysis = compiled.memory_analysis()
                memory[label] = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / 2**20
            if label == "gathered" or memory.get("dense", 0) <= max_dense_mib:
                programs[(label, T)] = (compiled, call)
    timed = {label for label, _ in programs}
    slopes, _ = interleaved_slopes(programs, LENGTHS, rounds) if len(timed) else ({}, {})
    return dict(n=n, p=p, memory=memory, slopes=slopes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer networks (about a minute)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-dense-mib", type=float, default=600.0)
    parser.add_argument("--networks", nargs="+", default=None, help="NEURONS:CONNECTIVITY pairs, e.g. 4096:0.1")
    args = parser.parse_args()
    nets = [(1024, p) for p in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)] + [(n, 0.1) for n in (256, 2048, 4096)]
    if args.quick:
        nets = [(256, 0.1), (1024, 0.1)]
    if args.networks:
        nets = [(int(a), float(b)) for a, b in (net.split(":") for net in args.networks)]
    print("| neurons | connectivity | memory gathered / dense (MiB) | ratio | step gathered / dense (us) | ratio |")
    print("| ---: | ---: | --- | ---: | --- | ---: |")
    for n, p in nets:
        r = measure(n, p, args.rounds, args.max_dense_mib)
        mem, sl = r["memory"], r["slopes"]
        dense_t = f"{1e6 * sl['dense']:.0f}" if "dense" in sl else "-"
        t_ratio = f"{sl['gathered'] / sl['dense']:.2f}" if "dense" in sl else "-"
        print(
            f"| {n} | {p:.0%} | {mem['gathered']:.1f} / {mem['dense']:.1f} | {mem['gathered'] / mem['dense']:.2f} | "
            f"{1e6 * sl['gathered']:.0f} / {dense_t} | {t_ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
