"""Does e-prop's cost follow the number of synapses? Compressed and masked layers against the dense cell.

A LIF layer with fixed fan-in on its inputs (64) and its recurrent weights (no autapses), a leaky readout of
4, batch 16, float32, ``ep.eprop``, in three forms (``eproptax._bench_sparse``, also ``eproptax bench
--connectivity``): compressed weights (index tables), boolean masks (the gathered layout) and the dense cell.
Per network it prints XLA's temporaries plus outputs of the compiled program (T = 50) and the cost of one
more step (``(t(T2) - t(T1)) / (T2 - T1)``, T = 20 and 50, the forms timed in interleaved rounds), and the
sparse forms' ratios to the dense cell. The first rows sweep the connectivity at 1024 neurons (the issue's
target network is the 10% row), the others the size at 10%. A program above ``--max-mib`` is compiled for
its memory but not timed. Prints a Markdown table.

    PYTHONPATH=. python benchmarks/sparse.py [--quick] [--rounds 3] [--networks 4096:0.1 ...]
"""

from __future__ import annotations

import argparse

from eproptax._bench_sparse import format_rows, measure_connectivity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer networks (about a minute)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-mib", type=float, default=600.0)
    parser.add_argument("--networks", nargs="+", default=None, help="NEURONS:CONNECTIVITY pairs, e.g. 4096:0.1")
    args = parser.parse_args()
    nets = [(1024, p) for p in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)] + [(n, 0.1) for n in (256, 2048, 4096)]
    if args.quick:
        nets = [(256, 0.1), (1024, 0.1)]
    if args.networks:
        nets = [(int(a), float(b)) for a, b in (net.split(":") for net in args.networks)]
    rows = []
    for n, p in nets:
        rows.append(measure_connectivity(n, p, rounds=args.rounds, max_mib=args.max_mib))
        print(format_rows(rows)[-1] if len(rows) > 1 else "\n".join(format_rows(rows)), flush=True)


if __name__ == "__main__":
    main()
