"""Time per step and peak memory against the sequence length T (100 to 10,000).

Question: do the online rules really carry no state that grows with T, while BPTT's memory grows linearly?
For each rule and T the program is compiled and XLA's memory analysis gives its peak memory (temporaries +
arguments + outputs); the inputs and targets themselves grow with T for every rule, so the figure that
must stay flat is ``peak - (inputs + targets bytes)``. The target: for eprop, eprop_m and deep_eprop its
value at T = 10,000 is within 5% of its value at T = 100. Time per step is measured where a run fits
the time budget (a rule whose run would take too long at large T is compiled only: its memory is still
reported).

Writes ``time_memory_vs_T.json`` and ``time_memory_vs_T.png`` to ``benchmarks/results/<device>/``.

    python benchmarks/time_memory_vs_T.py [--quick] [--cells lif lstm] [--hidden 32] [--batch 8]
"""

from __future__ import annotations

import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import log_axes, parser, pyplot, results_dir, save, save_figure, title  # noqa: E402

from eproptax._bench import RULES, build, measure, problem  # noqa: E402

SPECS = {spec.name: spec for spec in RULES}
DEFAULT_RULES = (
    "forward",
    "bptt",
    "rtrl",
    "eprop (leaky readout)",
    "eprop (stateless readout)",
    "eprop_m(1)",
    "deep_eprop(full)",
)
ONLINE = ("eprop", "deep_eprop", "rtrl")  # rule-name prefixes of the online rules (eprop_m included)


def io_bytes(prob) -> int:
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves((prob.inputs, prob.targets))))


def sweep(cell, rules, lengths, *, hidden, batch, n_in, budget_s, repeats, log=print) -> list[dict]:
    rows = []
    for name in rules:
        spec, per_step = SPECS[name], None
        for T in lengths:
            prob = problem(
                cell, readout=spec.readout, layers=spec.layers, n_in=n_in, hidden=hidden, time_steps=T, batch=batch
            )
            fn, _ = build(spec, prob)
            execute = per_step is None or per_step * T * (2 + repeats) < budget_s
            fig, _ = measure(fn, prob.params, prob.inputs, prob.targets, repeats=repeats, steps=T, execute=execute)
            if fig["per_step_s"] is not None:
                per_step = fig["per_step_s"]
            io = io_bytes(prob)
            row = dict(
                cell=cell,
                rule=name,
                T=T,
                hidden=hidden,
                batch=batch,
                n_in=n_in,
                layers=spec.layers,
                readout=spec.readout,
                dtype=str(prob.inputs.dtype),
                io_bytes=io,
                peak_minus_io=fig["memory"]["peak"] - io if fig["memory"] else None,
                **fig,
            )
            rows.append(row)
            step = "-" if row["per_step_s"] is None else f"{1e6 * row['per_step_s']:10.1f}"
            log(
                f"{cell:5s} {name:28s} T={T:6d}  peak {fig['memory']['peak'] / 2**20:9.3f} MiB  "
                f"peak-io {row['peak_minus_io'] / 2**20:9.3f} MiB  us/step {step:>10s}  "
                f"compile {fig['compile_s']:5.2f} s"
            )
    return rows


def summarise(rows, lengths) -> list[dict]:
    """Ratio of ``peak - io`` at the longest and the shortest T, per (cell, rule)."""
    out = []
    for key in dict.fromkeys((r["cell"], r["rule"]) for r in rows):
        by_t = {r["T"]: r for r in rows if (r["cell"], r["rule"]) == key}
        lo, hi = by_t[min(lengths)], by_t[max(lengths)]
        ratio = hi["peak_minus_io"] / lo["peak_minus_io"]
        online = key[1].startswith(ONLINE)
        out.append(
            dict(
                cell=key[0],
                rule=key[1],
                online=online,
                T_low=lo["T"],
                T_high=hi["T"],
                peak_minus_io_low=lo["peak_minus_io"],
                peak_minus_io_high=hi["peak_minus_io"],
                ratio=ratio,
                flat=ratio <= 1.05 if online else None,
            )
        )
    return out


def plot(rows, path):
    plt = pyplot()
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, axes = plt.subplots(len(cells), 2, figsize=(12, 4.2 * len(cells)), squeeze=False)
    for i, cell in enumerate(cells):
        for rule in dict.fromkeys(r["rule"] for r in rows if r["cell"] == cell):
            rs = [r for r in rows if r["cell"] == cell and r["rule"] == rule]
            axes[i, 0].plot([r["T"] for r in rs], [r["peak_minus_io"] / 2**20 for r in rs], "o-", label=rule)
            ts = [r for r in rs if r["per_step_s"] is not None]
            axes[i, 1].plot([r["T"] for r in ts], [1e6 * r["per_step_s"] for r in ts], "o-", label=rule)
        axes[i, 0].set_ylabel(f"{cell}: peak - inputs/targets (MiB)")
        axes[i, 1].set_ylabel(f"{cell}: time per step (us)")
        for ax in axes[i]:
            log_axes(ax)
            ax.set_xlabel("sequence length T")
        axes[i, 0].legend(fontsize=7)
    save_figure(fig, path, title("Peak memory (XLA memory analysis) and time per step against T"))


def main(argv=None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=["lif"])
    p.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), choices=list(SPECS))
    p.add_argument("--lengths", nargs="+", type=int, default=None)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-in", type=int, default=16)
    p.add_argument("--budget", type=float, default=8.0, help="seconds a timed (rule, T) may run")
    args = p.parse_args(argv)
    lengths = args.lengths or ([100, 1000, 10000] if args.quick else [100, 300, 1000, 3000, 10000])
    rules = (
        args.rules
        if not args.quick
        else [r for r in args.rules if r in ("bptt", "eprop (leaky readout)", "eprop_m(1)", "deep_eprop(full)")]
    )
    start = time.perf_counter()
    rows = []
    for cell in args.cells:
        rows += sweep(
            cell, rules, lengths, hidden=args.hidden, batch=args.batch, n_in=args.n_in, budget_s=args.budget, repeats=2
        )
    summary = summarise(rows, lengths)
    print(
        f"\npeak memory less inputs/targets, T={max(lengths)} vs T={min(lengths)} (online rules must stay within 5%):"
    )
    for s in summary:
        verdict = "" if s["flat"] is None else ("PASS" if s["flat"] else "MISS")
        print(
            f"  {s['cell']:5s} {s['rule']:28s} {s['peak_minus_io_low'] / 2**20:9.3f} -> "
            f"{s['peak_minus_io_high'] / 2**20:9.3f} MiB  ratio {s['ratio']:7.3f}  {verdict}"
        )
    path = save(
        "time_memory_vs_T",
        dict(rows=rows, summary=summary, seconds=time.perf_counter() - start, args=vars(args)),
        args.out,
    )
    plot(rows, os.path.join(results_dir(args.out), "time_memory_vs_T.png"))
    print(f"wrote {path} and the .png ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
