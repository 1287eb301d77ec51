"""The cost of the cell-contract checks a rule runs when it is built (``ep.cells.check``).

Usage: ``python benchmarks/contract_cost.py [--n 256]``. Each network is checked in a fresh process state
(the first check of a process also pays for JAX's eager kernels of each primitive and shape, the cold
cost), then again with a new cell of the same kind and sizes (warm: what a second rule build, or a second
network of the same shapes, pays). The figures go to benchmarks/README.md.
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
    print(f"{'network':8} {'cold s':>8} {'warm s':>8} {'rule build, cached s':>22}")
    for name, make in NETWORKS.items():
        cold = seconds(lambda: ep.cells.check(make(args.n)))
        model = make(args.n)
        warm = seconds(lambda: ep.cells.check(model))
        cached = seconds(lambda: ep.eprop(model, lambda out, target: 0.0 * out.sum()))
        print(f"{name + str(args.n):8} {cold:8.3f} {warm:8.3f} {cached:22.3f}")


if __name__ == "__main__":
    main()
