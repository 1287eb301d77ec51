"""``eproptax bench``: what every rule costs against BPTT, the forward pass and the machine's own limits.

For every rule (bptt, rtrl, eprop with a leaky and with a stateless readout, eprop_m orders 0..2, deep_eprop
spatial and full) on LIF, ALIF, LSTM and GRU networks it measures the wall time per step after compilation
(minimum of repeated runs, ``jax.block_until_ready``), the lowering and compile times (``jax.jit(f).lower(
...).compile()``), the peak memory of the compiled program (XLA's memory analysis: temporaries + arguments
+ outputs - aliased), XLA's own per-step cost estimate, and the gradient's cosine similarity and relative
error against BPTT on the same network. Reference points come from the same run: the forward pass alone,
the memory bandwidth (an in-place scale of a large array) and the float32 matmul throughput, so that each
rule's step is reported as a fraction of the bound that binds it (the roofline of its useful work, see
:func:`useful_work`).

The default sweep (hidden 16, T = 100, batch 8) runs every rule on the first cell (LIF) and the one-layer
leaky-readout rules on the others, which keeps it under two minutes on a laptop CPU (compilation dominates);
``--full`` adds the stateless-readout and two-layer variants on every cell. Programs whose lowered text is
identical (``eprop_m(0)`` is ``eprop``) are compiled once. Each run writes ``bench.json`` (every figure, with
the device, JAX version, sizes, dtype and the host's load) and ``bench.png`` to ``--out``.

The rows here (:data:`RULES`, :func:`build`, :func:`rule_rows`) and the measurements of ``_measure``
(:func:`problem`, :func:`measure`, :func:`hardware`, :func:`roofline`, re-exported here) are shared with the
scripts in ``benchmarks/``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._cli import HelpFormatter, fraction, non_negative_int, positive_int, seed, writable_folder
from ._compare import Problem, alignment
from ._engine import sequence_loss
from ._measure import _best_times as _best_times
from ._measure import _memory as _memory
from ._measure import _tree_bytes as _tree_bytes
from ._measure import bandwidth as bandwidth
from ._measure import device_info as device_info
from ._measure import device_name as device_name
from ._measure import hardware as hardware
from ._measure import influence_shape as influence_shape
from ._measure import matmul_throughput as matmul_throughput
from ._measure import measure as measure
from ._measure import problem as problem
from ._measure import roofline as roofline
from ._measure import useful_work as useful_work
from ._registry import RULES as REGISTRY
from ._registry import keyed, make_rule

CELLS = ("lif", "alif", "lstm", "gru")
MIB = 2.0**20


class RuleSpec(NamedTuple):
    """One row of the benchmark: a rule configured on a network variant."""

    name: str
    layers: int  # recurrent layers of the network it runs on
    readout: str  # "leaky" or "stateless"
    kind: str  # "forward", "bptt", "rtrl", "traces", or "other" (a rule of the zoo)
    rule: Callable  # (model, loss, **options) -> the public whole-sequence function, with its defaults
    online: Callable | None = None  # (model, loss) -> its online rule (state size and roofline)


def build(spec: RuleSpec, prob: Problem, **options):
    """``(fn, online)`` for a row: the public rule as a user calls it (its default ``unroll`` included,
    or ``options``), and its online form (``None`` for forward and BPTT)."""
    fn = spec.rule(prob.model, prob.loss, **options)
    return fn, (spec.online(prob.model, prob.loss) if spec.online else None)


def _keyed_rule(rule: str, model, loss, **options):
    """``ep.make_rule(rule, model, loss, **options)``, at one fixed key for a rule that draws noise."""
    return keyed(REGISTRY[rule], make_rule(rule, model, loss, **options))


def _spec(name: str, layers: int, readout: str, kind: str, rule: str, **options) -> RuleSpec:
    """A row running the registered rule ``rule`` with ``options`` (``ep.make_rule``) on a network variant."""
    grad_fn = functools.partial(_keyed_rule, rule, **options)
    online = functools.partial(make_rule, rule, online=True, **options) if REGISTRY[rule].online_form else None
    return RuleSpec(name, layers, readout, kind, grad_fn, online if kind in ("rtrl", "traces", "other") else None)


_MEASURED = (
    RuleSpec("forward", 1, "leaky", "forward", sequence_loss),
    _spec("bptt", 1, "leaky", "bptt", "bptt"),
    _spec("rtrl", 1, "leaky", "rtrl", "rtrl"),
    _spec("eprop (leaky readout)", 1, "leaky", "traces", "eprop"),
    RuleSpec("forward (stateless readout)", 1, "stateless", "forward", sequence_loss),
    _spec("bptt (stateless readout)", 1, "stateless", "bptt", "bptt"),
    _spec("eprop (stateless readout)", 1, "stateless", "traces", "eprop"),
    *(
        _spec(REGISTRY["eprop_m"].label({"order": m}, keys=False), 1, "leaky", "traces", "eprop_m", order=m)
        for m in range(3)
    ),
    _spec("snap", 1, "leaky", "traces", "snap"),
    _spec("bptt (2 layers)", 2, "leaky", "bptt", "bptt"),
    *(
        _spec(REGISTRY["deep_eprop"].label({"depth": d}, keys=False), 2, "leaky", "traces", "deep_eprop", depth=d)
        for d in ("spatial", "full")
    ),
)
_COVERED = {spec.rule.args[0] for spec in _MEASURED if isinstance(spec.rule, functools.partial)}  # rule names
RULES = _MEASURED + tuple(_spec(name, 1, "leaky", "other", name) for name in REGISTRY if name not in _COVERED)
"""The benchmark's rows: every rule of ``ep.rules`` (a rule registered without a row here runs at its defaults
on the one-layer leaky network, with the roofline of its online form), with the forward pass and the network
variants."""


def rule_rows(
    cell: str,
    specs=RULES,
    *,
    hw: dict,
    n_in=16,
    hidden=32,
    time_steps=100,
    batch=8,
    repeats=3,
    rtrl_max_hidden=32,
    seed=0,
    cache=None,
    log=None,
) -> list[dict]:
    """Measures ``specs`` on ``cell`` networks; each row holds every figure of the module docstring.

    The gradient is compared with the BPTT row of the same network variant (layers, readout); time is
    compared with the forward pass and BPTT of that variant (or, when a variant has no forward row, of
    the one-layer leaky network). RTRL runs only when ``hidden <= rtrl_max_hidden``.
    """
    probs, refs, rows = {}, {}, []
    for spec in specs:
        if spec.kind == "rtrl" and hidden > rtrl_max_hidden:
            continue
        variant = (spec.layers, spec.readout)
        prob = _variant_problem(
            probs, cell, spec, n_in=n_in, hidden=hidden, time_steps=time_steps, batch=batch, seed=seed
        )
        row, out, online = _measure_row(
            cell, spec, prob, n_in=n_in, hidden=hidden, time_steps=time_steps, batch=batch, repeats=repeats, cache=cache
        )
        _attach_references(row, out, spec.kind, variant, refs)
        if online is not None:  # its plan's closed form, or (without a plan) its state's bytes
            row.update(roofline(online, prob, spec.kind, row["per_step_s"], hw))
        rows.append(row)
        if log:
            log(format_row(row))
    return rows


def _variant_problem(probs: dict, cell: str, spec: RuleSpec, **sizes) -> Problem:
    """The problem of ``spec``'s network variant (layers, readout), built once and kept in ``probs``."""
    variant = (spec.layers, spec.readout)
    if variant not in probs:
        probs[variant] = problem(cell, readout=spec.readout, layers=spec.layers, **sizes)
    return probs[variant]


def _measure_row(
    cell: str, spec: RuleSpec, prob: Problem, *, n_in, hidden, time_steps, batch, repeats, cache
) -> tuple[dict, object, object]:
    """Compiles and times ``spec``'s rule on ``prob``: ``(row, outputs, online form)``, the row without references."""
    fn, online = build(spec, prob)
    fig, out = measure(
        fn,
        prob.params,
        prob.inputs,
        prob.targets,
        repeats=repeats,
        steps=time_steps,
        cache=cache,
        name=f"{cell}: {spec.name}",
    )
    row = dict(
        cell=cell,
        rule=spec.name,
        kind=spec.kind,
        layers=spec.layers,
        readout=spec.readout,
        n_in=n_in,
        hidden=hidden,
        time_steps=time_steps,
        batch=batch,
        dtype=str(prob.inputs.dtype),
        **fig,
    )
    return row, out, online


def _attach_references(row: dict, out, kind: str, variant: tuple, refs: dict) -> None:
    """Compares ``row`` (outputs ``out = (loss, grads)``) with its variant's references in ``refs``, in place.

    A forward or BPTT row becomes the reference of its variant; every other row gets the cosine and relative
    error of its gradient to BPTT's, and each row its time per step as a multiple of the forward pass (or the
    one-layer leaky network's) and of BPTT.
    """
    if kind == "forward":
        refs[variant + ("forward",)] = row
    elif kind == "bptt":
        refs[variant + ("bptt",)] = row
        refs[variant + ("grads",)] = out[1]
    if kind not in ("forward",) and variant + ("grads",) in refs:
        row["cosine"], row["rel_error"] = alignment(out[1], refs[variant + ("grads",)])
    fwd = refs.get(variant + ("forward",), refs.get((1, "leaky", "forward")))
    ref_bptt = refs.get(variant + ("bptt",))
    row["x_forward"] = row["per_step_s"] / fwd["per_step_s"] if fwd else None
    row["x_bptt"] = row["per_step_s"] / ref_bptt["per_step_s"] if ref_bptt else None


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------

HEADER = (
    f"{'network':10s} {'rule':28s} {'us/step':>9s} {'x fwd':>6s} {'x bptt':>6s} {'compile':>7s} "
    f"{'peak MB':>8s} {'cosine':>7s} {'rel.err':>8s} {'roofline':>12s}"
)


def format_row(r: dict) -> str:
    fmt = lambda v, f: "-" if v is None else format(v, f)
    mem = r["memory"]["peak"] / MIB if r.get("memory") else None
    roof = "-"
    if r.get("roofline_fraction") is not None:
        roof = f"{100 * r['roofline_fraction']:5.1f}% {'bw' if r['bound'] == 'bandwidth' else 'mm'}"
    network = f"{r['cell']}{r['hidden']}" + (f"x{r['layers']}" if r["layers"] > 1 else "")
    compile_s = fmt(r["compile_s"], "7.2f") + ("=" if r.get("same_as") else " ")
    return (
        f"{network:10s} {r['rule']:28s} {1e6 * r['per_step_s']:9.2f} {fmt(r.get('x_forward'), '6.2f')} "
        f"{fmt(r.get('x_bptt'), '6.2f')} {compile_s:>8s}{fmt(mem, '8.2f')} {fmt(r.get('cosine'), '7.4f')} "
        f"{fmt(r.get('rel_error'), '8.1e')} {roof:>12s}"
    )


def write_json(path: str, payload: dict) -> None:
    """Writes ``payload`` with the device information attached (floats as JSON numbers)."""

    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        return str(o)

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"info": device_info(), **payload}, f, indent=1, default=default)


def plot_rows(rows: list[dict], path: str, title: str) -> None:
    """Bar charts of time per step (as a multiple of the forward pass), peak memory and cosine to BPTT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell_names = list(dict.fromkeys(r["cell"] for r in rows))
    rules = [r for r in dict.fromkeys(r["rule"] for r in rows) if not r.startswith("forward")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    width = 0.8 / max(1, len(cell_names))
    panels = (
        ("per_step_s", "time per step (us, log)", 1e6, True),
        ("peak_mb", "peak memory (MiB, log)", 1.0, True),
        ("cosine", "cosine similarity to BPTT", 1.0, False),
    )
    for ax, (key, label, scale, log) in zip(axes, panels):
        for c, cell in enumerate(cell_names):
            values = []
            for rule in rules:
                row = next((r for r in rows if r["cell"] == cell and r["rule"] == rule), None)
                v = None
                if row is not None:
                    v = (
                        (row["memory"]["peak"] / MIB if row.get("memory") else None)
                        if key == "peak_mb"
                        else row.get(key)
                    )
                values.append(np.nan if v is None else v * scale)
            ax.barh(np.arange(len(rules)) + c * width, values, height=width, label=cell)
        ax.set_yticks(np.arange(len(rules)) + 0.4 - width / 2)
        ax.set_yticklabels(rules if ax is axes[0] else [], fontsize=8)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[-1].set_xlim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    info = device_info()
    out = writable_folder(args.out if args.out is not None else os.path.join("results", f"bench-{info['device']}"))
    start = time.perf_counter()
    if args.connectivity:
        return run_connectivity(args, info, out, start)
    print(
        f"eproptax bench on {info['device']} ({info['cpu'] if info['platform'] == 'cpu' else info['device_kind']}),"
        f" jax {info['jax']}, float32; n_in={args.n_in}, hidden={args.hidden}, T={args.steps}, "
        f"batch={args.batch}"
    )
    hw = hardware(quick=args.quick)
    print(
        f"reference: bandwidth {hw['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s (in-place scale of "
        f"{hw['bandwidth']['bytes'] // 2**20} MiB), matmul {hw['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s (float32)"
    )
    print(
        "time per step after compilation (min of repeats); 'x fwd'/'x bptt': ratios to the same network's "
        "forward pass / BPTT;\ncompile in s ('=': same program as a row above, executable reused); peak "
        "memory of the compiled program; roofline: the\nstep's minimum time at the measured bandwidth (bw) or "
        "matmul rate (mm), as a fraction of the measured time.\n"
    )
    print(HEADER)
    rows, cache = [], {}
    for i, cell in enumerate(args.cells):
        # the default sweep runs the variants (stateless readout, two layers) on the first cell only
        specs = [
            s for s in RULES if args.full or (i == 0 and not args.quick) or (s.layers == 1 and s.readout == "leaky")
        ]
        rows += rule_rows(
            cell,
            specs,
            hw=hw,
            n_in=args.n_in,
            hidden=args.hidden,
            time_steps=args.steps,
            batch=args.batch,
            repeats=args.repeats,
            rtrl_max_hidden=args.rtrl_max_hidden,
            seed=args.seed,
            cache=cache,
            log=print,
        )
    elapsed = time.perf_counter() - start
    os.makedirs(out, exist_ok=True)
    write_json(
        os.path.join(out, "bench.json"),
        dict(hardware=hw, rows=rows, seconds=elapsed, args={k: v for k, v in vars(args).items() if k != "func"}),
    )
    plot_rows(
        rows,
        os.path.join(out, "bench.png"),
        f"eproptax bench, {info['device']}, jax {info['jax']}: hidden {args.hidden}, T {args.steps}, "
        f"batch {args.batch}, float32",
    )
    print(f"\nwrote {out}/bench.json and bench.png ({elapsed:.0f} s)")
    return 0


def run_connectivity(args, info, out, start) -> int:
    """``--connectivity``: e-prop on a sparse LIF layer against the dense cell (:mod:`._bench_sparse`)."""
    from ._bench_sparse import format_rows, measure_connectivity

    print(
        f"eproptax bench --connectivity on {info['device']}, jax {info['jax']}, float32: LIF({args.hidden}) with "
        f"{args.n_in} inputs, both masks at each fixed fan-in, leaky readout of 4, batch {args.batch}, ep.eprop; "
        "memory: XLA's temporaries + outputs (T = 50); step: the cost of one more step (T = 20 and 50)\n"
    )
    rows = []
    for p in args.connectivity:
        rows.append(measure_connectivity(args.hidden, p, n_in=args.n_in, batch=args.batch, rounds=args.repeats))
        print(format_rows(rows)[-1] if len(rows) > 1 else "\n".join(format_rows(rows)), flush=True)
    elapsed = time.perf_counter() - start
    os.makedirs(out, exist_ok=True)
    write_json(
        os.path.join(out, "bench.json"),
        dict(connectivity=rows, seconds=elapsed, args={k: v for k, v in vars(args).items() if k != "func"}),
    )
    print(f"\nwrote {out}/bench.json ({elapsed:.0f} s)")
    return 0


def add_parser(sub) -> None:
    """Adds ``eproptax bench`` to ``sub``; its sizes are checked while parsing, ``--out`` before the sweep."""
    p = sub.add_parser(
        "bench",
        help="time, memory and gradient quality of every rule on LIF/ALIF/LSTM/GRU "
        "networks, against the forward pass and the machine's limits",
        description="Time, memory and gradient quality of every rule against the forward pass, BPTT and the "
        "machine's limits; writes bench.json and bench.png. A misuse exits with status 2 and one error line.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS), help="the networks' cells")
    p.add_argument("--hidden", type=positive_int, default=16, metavar="N", help="neurons per recurrent layer")
    p.add_argument("--n-in", type=positive_int, default=16, metavar="N", help="input channels")
    p.add_argument("--steps", type=positive_int, default=100, metavar="T", help="time steps of the sequence")
    p.add_argument("--batch", type=positive_int, default=8, metavar="N", help="sequences per batch")
    p.add_argument(
        "--repeats", type=positive_int, default=3, metavar="N", help="timed runs per rule (the fastest counts)"
    )
    p.add_argument(
        "--rtrl-max-hidden", type=non_negative_int, default=32, metavar="N", help="skip RTRL above this hidden size"
    )
    p.add_argument("--seed", type=seed, default=0, help="jax.random.key seed, 0 to 2**32 - 1")
    p.add_argument(
        "--full",
        action="store_true",
        help="every variant (stateless readout, two layers) on every "
        "cell, not only on the first (about four times longer)",
    )
    p.add_argument(
        "--quick", action="store_true", help="one-layer leaky-readout networks only, smaller reference arrays"
    )
    p.add_argument(
        "--connectivity",
        nargs="+",
        type=fraction,
        metavar="P",
        help="instead of the rules: e-prop on a LIF(--hidden) layer at each fixed fan-in P in (0, 1], "
        "compressed and masked against the dense cell (memory and time per step)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="results folder, checked before the sweep (default: results/bench-<device>)"
    )
    p.set_defaults(func=run)
