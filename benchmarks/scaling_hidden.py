"""Time per step and peak memory against the hidden size and against the batch size.

Question: how does each rule's cost grow with the network and the batch, and how close does it get to the
machine's limits as it grows? Hidden sizes 16..256 at batch 8, then batch sizes 1..64 at hidden 64, on
LIF and LSTM networks with a leaky readout (and e-prop with a stateless readout). RTRL (O(n^4) per step)
and eprop_m(1) (O(n^4) too) stop at smaller sizes. Each row carries the step's roofline: the bytes it
must move (its online state, read and written once) and the matmul FLOPs it must do, against the bandwidth
and matmul throughput measured in the same run.

Writes ``scaling_hidden.json`` and ``scaling_hidden.png`` to ``benchmarks/results/<device>/``.

    python benchmarks/scaling_hidden.py [--quick] [--cells lif lstm] [--steps 50]
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import log_axes, parser, pyplot, results_dir, save, save_figure, title  # noqa: E402

from eproptax._bench import RULES, build, hardware, measure, problem, roofline  # noqa: E402

SPECS = {spec.name: spec for spec in RULES}
# rule -> largest hidden size it runs at (cost per step O(n^4) for rtrl and eprop_m(1))
MAX_HIDDEN = {
    "forward": 4096,
    "bptt": 4096,
    "eprop (leaky readout)": 4096,
    "eprop (stateless readout)": 4096,
    "eprop_m(1)": 64,
    "rtrl": 64,
}
MAX_HIDDEN_GATED = {"rtrl": 32, "eprop_m(1)": 32}  # LSTM / GRU: four gates, |theta| four times larger


def run_one(cell, name, *, hidden, batch, steps, n_in, hw, repeats):
    spec = SPECS[name]
    prob = problem(
        cell, readout=spec.readout, layers=spec.layers, n_in=n_in, hidden=hidden, time_steps=steps, batch=batch
    )
    fn, online = build(spec, prob)
    fig, _ = measure(fn, prob.params, prob.inputs, prob.targets, repeats=repeats, steps=steps)
    row = dict(
        cell=cell,
        rule=name,
        hidden=hidden,
        batch=batch,
        time_steps=steps,
        n_in=n_in,
        dtype=str(prob.inputs.dtype),
        **fig,
    )
    if online is not None:
        row.update(roofline(online, prob, spec.kind, row["per_step_s"], hw))
    roof = f"{100 * row['roofline_fraction']:5.1f}% of {row['bound']}" if "roofline_fraction" in row else ""
    print(
        f"{cell:5s} {name:28s} n={hidden:4d} B={batch:3d}  {1e6 * row['per_step_s']:10.1f} us/step  "
        f"peak {row['memory']['peak'] / 2**20:9.2f} MiB  compile {row['compile_s']:5.2f} s  {roof}",
        flush=True,
    )
    return row


def plot(rows, path):
    plt = pyplot()
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, axes = plt.subplots(len(cells), 3, figsize=(16, 4.3 * len(cells)), squeeze=False)
    colours = {rule: f"C{k}" for k, rule in enumerate(dict.fromkeys(r["rule"] for r in rows))}
    for i, cell in enumerate(cells):
        for rule in dict.fromkeys(r["rule"] for r in rows if r["cell"] == cell):
            hs = [r for r in rows if r["cell"] == cell and r["rule"] == rule and r["sweep"] == "hidden"]
            bs = [r for r in rows if r["cell"] == cell and r["rule"] == rule and r["sweep"] == "batch"]
            style = dict(color=colours[rule], label=rule)
            axes[i, 0].plot([r["hidden"] for r in hs], [1e6 * r["per_step_s"] for r in hs], "o-", **style)
            axes[i, 1].plot([r["hidden"] for r in hs], [r["memory"]["peak"] / 2**20 for r in hs], "o-", **style)
            if bs:
                axes[i, 2].plot([r["batch"] for r in bs], [1e6 * r["per_step_s"] for r in bs], "o-", **style)
        axes[i, 0].set(xlabel="hidden size (batch 8)", ylabel=f"{cell}: time per step (us)")
        axes[i, 1].set(xlabel="hidden size (batch 8)", ylabel=f"{cell}: peak memory (MiB)")
        axes[i, 2].set(xlabel="batch size (hidden 64)", ylabel=f"{cell}: time per step (us)")
        for ax in axes[i]:
            log_axes(ax, base=2)
        axes[i, 0].legend(fontsize=7)
    save_figure(fig, path, title("Time per step and peak memory against hidden size and batch size"))


def main(argv=None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=["lif", "lstm"])
    p.add_argument("--hidden", nargs="+", type=int, default=None)
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n-in", type=int, default=16)
    p.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON, measure nothing")
    args = p.parse_args(argv)
    if args.replot:
        with open(os.path.join(results_dir(args.out), "scaling_hidden.json")) as f:
            plot(json.load(f)["rows"], os.path.join(results_dir(args.out), "scaling_hidden.png"))
        return
    hidden_sizes = args.hidden or ([16, 64, 256] if args.quick else [16, 32, 64, 128, 256])
    batches = args.batches or ([1, 16] if args.quick else [1, 4, 16, 64])
    cells = args.cells if not args.quick else args.cells[:1]
    start = time.perf_counter()
    hw = hardware(quick=args.quick)
    print(
        f"bandwidth {hw['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s, "
        f"matmul {hw['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s"
    )
    rows = []
    for cell in cells:
        limits = {**MAX_HIDDEN, **(MAX_HIDDEN_GATED if cell in ("lstm", "gru") else {})}
        for name in MAX_HIDDEN:
            for hidden in hidden_sizes:
                if hidden <= limits[name]:
                    rows.append(
                        {
                            **run_one(
                                cell, name, hidden=hidden, batch=8, steps=args.steps, n_in=args.n_in, hw=hw, repeats=3
                            ),
                            "sweep": "hidden",
                        }
                    )
        for name in ("forward", "bptt", "eprop (leaky readout)", "eprop_m(1)"):
            for batch in batches:
                if 64 <= limits[name] or name != "eprop_m(1)":
                    hidden = 64 if 64 <= limits[name] else limits[name]
                    rows.append(
                        {
                            **run_one(
                                cell,
                                name,
                                hidden=hidden,
                                batch=batch,
                                steps=args.steps,
                                n_in=args.n_in,
                                hw=hw,
                                repeats=3,
                            ),
                            "sweep": "batch",
                        }
                    )
    path = save(
        "scaling_hidden", dict(hardware=hw, rows=rows, seconds=time.perf_counter() - start, args=vars(args)), args.out
    )
    plot(rows, os.path.join(results_dir(args.out), "scaling_hidden.png"))
    print(f"wrote {path} and the .png ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
