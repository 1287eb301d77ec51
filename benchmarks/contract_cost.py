"""The cost of the cell-contract checks a rule runs when it is built (``ep.cells.check``).

Usage: ``python benchmarks/contract_cost.py [--n 256]``. For each kind of network, in one process:

- ``first``: its first check (the first of the process also pays for JAX's own start-up of tracing);
- ``other n``: a network of ``n + 1`` neurons, a program of new shapes (the compile, JAX warm);
- ``rebuilt``: a new network of the same kind and sizes (the same program: its measurements are reused);
- ``rule``: ``ep.eprop`` built for a network already checked (the cell is remembered).

The figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import jax

import eproptax as ep

NETWORKS = {
    "lif": lambda n: ep.cells.stack(ep.cells.lif(64, n), ep.cells.leaky_readout(n, 4)),
    "alif": lambda n: ep.cells.stack(ep.cells.alif(64, n), ep.cells.leaky_readout(n, 4)),
    "lstm": lambda n: ep.cells.stack(ep.cells.lstm(64, n), ep.cells.readout(n, 4)),
}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="neurons of the recurrent layer")
    args = parser.parse_args()
    jax.block_until_ready(jax.numpy.zeros(1) + 1)  # the backend's own start-up is not the checks' cost
    print(f"{'network':8} {'first s':>8} {'other n s':>10} {'rebuilt s':>10} {'rule s':>8}")
    for name, make in NETWORKS.items():
        first = seconds(lambda: ep.cells.check(make(args.n)))
        other = seconds(lambda: ep.cells.check(make(args.n + 1)))
        model = make(args.n)
        rebuilt = seconds(lambda: ep.cells.check(model))
        rule = seconds(lambda: ep.eprop(model, lambda out, target: 0.0 * out.sum()))
        print(f"{name + str(args.n):8} {first:8.3f} {other:10.3f} {rebuilt:10.3f} {rule:8.3f}")


if __name__ == "__main__":
    main()
