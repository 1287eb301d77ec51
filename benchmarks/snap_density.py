"""Does SnAp-n's cost follow its pattern's density?

A tanh RNN of ``--hidden`` neurons whose recurrent weights are masked to a ring (neuron ``j`` reads ``j +- 1
.. j +- hops``, no autapse) under a stateless readout, batch 8, float32. SnAp-2 reaches each neuron and its
``2 hops`` neighbours: ``r = 2 hops + 1`` of the layer's ``n`` state variables. Per ``hops`` it prints ``r / n``,
the online state's bytes of ``snap(n=2)`` and of ``rtrl`` (their plans, ``online.plan.cost``), and the cost of
one more step of each (``(t(T2) - t(T1)) / (T2 - T1)``, the two rules' programs timed in interleaved rounds in
one process). ``--rev REV`` times that git revision's ``snap(n=2)`` beside them (``benchmarks/ab.py``'s import).
It prints a Markdown table and writes nothing.

    PYTHONPATH=. python benchmarks/snap_density.py [--hidden 64] [--hops 1 2 4 8] [--rev REV]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_slopes  # noqa: E402

import eproptax as ep  # noqa: E402

N_IN, N_OUT, BATCH, LENGTHS = 4, 2, 8, (20, 40)


def ring_rnn(n: int, hops: int, cells=ep.cells):
    offsets = (np.arange(n)[:, None] - np.arange(n)[None, :]) % n
    ring = jnp.asarray(np.isin(offsets, [h % n for h in range(1, hops + 1)] + [-h % n for h in range(1, hops + 1)]))

    def init(key):
        k1, k2 = jax.random.split(key)
        scale = 1.0 / np.sqrt(2 * hops)
        return {
            "w_in": jax.random.normal(k1, (n, N_IN)),
            "w_rec": scale * jax.random.normal(k2, (n, n)),
            "b": jnp.zeros(n),
        }

    hidden = cells.make_cell(
        n_in=N_IN,
        n_out=n,
        init=init,
        init_carry=lambda p: jnp.zeros(n),
        synapse=lambda p, x, z: (p["w_in"] @ x + (ring * p["w_rec"]) @ z + p["b"])[:, None],
        dynamics=lambda h, a: jnp.tanh(a[:, 0]),
        output=lambda h: h,
    )
    return cells.stack(hidden, cells.readout(n, N_OUT))


def mse(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rev", default=None, help="also time this git revision's snap(n=2)")
    args = p.parse_args()
    rev = None
    if args.rev:
        from ab import import_revision

        rev = import_revision(args.rev, tempfile.mkdtemp()).__name__.rsplit(".", 1)[0]
        rev = sys.modules[rev]
    rules = {"snap(n=2)": (ep, lambda e, m: e.snap(m, mse, 2)), "rtrl": (ep, lambda e, m: e.rtrl(m, mse))}
    if rev is not None:
        rules[f"snap(n=2) at {args.rev}"] = (rev, lambda e, m: e.snap(m, mse, 2))
    print("| hops | r / n | state snap / rtrl (KiB) | " + " | ".join(f"{r} per step (us)" for r in rules) + " |")
    print("| --- " * (3 + len(rules)) + "|")
    for hops in args.hops:
        n = args.hidden
        programs, states = {}, {}
        for label, (lib, make) in rules.items():
            model = ring_rnn(n, hops, lib.cells)
            params = model.init(jax.random.key(0))
            for T in LENGTHS:
                inputs = jax.random.normal(jax.random.key(1), (BATCH, T, N_IN))
                targets = jnp.zeros((BATCH, T, N_OUT))
                call = (params, inputs, targets)
                programs[(label, T)] = (jax.jit(make(lib, model)).lower(*call).compile(), call)
            online = {"snap(n=2)": lib.online.snap(model, mse, 2), "rtrl": lib.online.rtrl(model, mse)}.get(label)
            if online is not None:
                states[label] = online.plan.cost(BATCH).state_bytes / 1024
        slopes, _ = interleaved_slopes(programs, LENGTHS, args.rounds)
        r = min(2 * hops + 1, n)
        times = " | ".join(f"{1e6 * slopes[label]:.0f}" for label in rules)
        print(f"| {hops} | {r}/{n} | {states['snap(n=2)']:.0f} / {states['rtrl']:.0f} | {times} |", flush=True)


if __name__ == "__main__":
    main()
