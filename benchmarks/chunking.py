"""Does the chunked whole-sequence view (``chunk=K``) pay, on which networks, and from which K?

Question: a level-0 rule can advance its traces K steps at once (``ep.eprop(..., chunk=K)``, docs/design.md,
"The chunked view"): the forward pass runs the chunk's K steps and keeps their per-neuron coefficients, then
every trace moves over them in one pass and two matrix products instead of two or more passes per step.
Per network this times the library's rule, as a user calls it, at ``chunk = 1`` (stepping) and each K: the
per-step slope ``(t(T2) - t(T1)) / (T2 - T1)`` in interleaved rounds (every program once per round, the
minimum kept), its ratio to stepping (above 1: the chunks are faster), the temporaries of the compiled
program at T2 (XLA's memory analysis) and the largest difference of the gradient to stepping's. The
lengths are multiples of every K, so the slope is the chunks' own. Writes ``chunking.json``.

    python benchmarks/chunking.py [--quick]
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_slopes, parser, save  # noqa: E402

from eproptax._bench import RULES, _memory, build, problem  # noqa: E402

SPECS = {spec.name: spec for spec in RULES}
NETWORKS = (
    ("gru", "eprop (stateless readout)", 32, 1),
    ("gru", "eprop (stateless readout)", 128, 1),
    ("gru", "eprop (stateless readout)", 32, 8),
    ("lif", "eprop (leaky readout)", 32, 8),
    ("alif", "eprop (leaky readout)", 32, 8),
    ("lstm", "eprop (leaky readout)", 16, 8),
    ("lstm", "eprop (leaky readout)", 64, 8),
    ("lif", "eprop (stateless readout)", 256, 32),
    ("alif", "eprop (leaky readout)", 256, 32),
)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    networks = NETWORKS[:4] if args.quick else NETWORKS
    ks = [1] + args.chunks
    rows = []
    for cell, rule, hidden, batch in networks:
        spec = SPECS[rule]
        lengths = (max(ks), 3 * max(ks)) if hidden * batch <= 2048 else (max(ks), 2 * max(ks))
        programs, grads, memory = {}, {}, {}
        for K in ks:
            for T in lengths:
                prob = problem(cell, readout=spec.readout, hidden=hidden, batch=batch, time_steps=T)
                fn, _ = build(spec, prob, chunk=K)
                call = (prob.params, prob.inputs, prob.targets)
                compiled = jax.jit(fn).lower(*call).compile()
                out = jax.block_until_ready(compiled(*call))
                programs[(K, T)] = (compiled, call)
                if T == lengths[1]:
                    grads[K], memory[K] = out[1], (_memory(compiled) or {}).get("temp")
        slope, _ = interleaved_slopes(programs, lengths, args.rounds, repeats=3)
        diff = {
            K: max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-30))
                for a, b in zip(jax.tree_util.tree_leaves(grads[K]), jax.tree_util.tree_leaves(grads[1]))
            )
            for K in args.chunks
        }
        row = dict(
            cell=cell,
            rule=rule,
            hidden=hidden,
            batch=batch,
            lengths=list(lengths),
            per_step_s={K: slope[K] for K in ks},
            speedup={K: slope[1] / slope[K] for K in args.chunks},
            temp_bytes=memory,
            max_rel_grad_diff=diff,
        )
        rows.append(row)
        print(
            f"{cell}({hidden}) b{batch} {rule}: stepping {1e6 * slope[1]:.2f} us/step; "
            + ", ".join(f"K={K} x{row['speedup'][K]:.2f}" for K in args.chunks)
            + f"; temp {(memory[1] or 0) / 2**20:.2f} MiB at K=1, "
            + f"{(memory[max(ks)] or 0) / 2**20:.2f} MiB at K={max(ks)}"
            + f"; gradient differs by {max(diff.values()):.1e} at most",
            flush=True,
        )
    print("wrote", save("chunking", dict(rows=rows), args.out))


if __name__ == "__main__":
    main()
