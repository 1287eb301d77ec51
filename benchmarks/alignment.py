"""Gradient alignment with BPTT across the e-prop family: m-order e-prop against the order, deep e-prop
against depth.

    python benchmarks/alignment.py            # the figures of docs/family.md (215 s of CPU, 2-core machine)
    python benchmarks/alignment.py --quick    # a smaller grid, no timing (about a minute)

(a) ``eprop_m(order=m)`` for ``m = 0..4`` on one recurrent layer (LIF and GRU) of ``n`` neurons with a leaky
readout, for ``n`` in {8, 16, 32} and ``T`` in {20, 50, 100}; (b) ``deep_eprop`` with ``depth`` "spatial",
"collapsed" and "full" on stacks of 1 to 4 layers (LIF and GRU, 16 neurons each, ``T = 50``). Each point is
the cosine similarity of the rule's gradient with BPTT's, mean and standard deviation over random networks
(``--seeds``, default 5), each on a batch of 4 sequences. (c) Costs: the floats each online rule carries per
example between steps (``jax.eval_shape`` of its ``init``) for every order and depth, and the CPU time per
step of the jitted whole-sequence rules (one layer, and three layers for deep e-prop; ``--no-timing`` skips
it).

The task is one where the explicit recurrence matters: a delayed copy, ``target_t = input_{t - delay}``
(first ``n_out`` channels, ``--delay`` 5), scored from step ``delay`` on, with strong recurrent weights.
GRU: Gaussian inputs and twice the default recurrent kernels (``--gain-gru``). LIF: Poisson inputs (rate
0.2), a positive input drive (``LIF_DRIVE``) and half the default ``N(0, 1/n)`` recurrent weights
(``--gain-lif``): with threshold 0.03 the default scale already drives most of the activity, and half of
it keeps the rates near 0.1 per step (the JSON records them) while order 0 stays far from BPTT. The cosine
is reported for the recurrent layers' gradient (the readout's gradient is exact under every rule and would
hide the differences), the first layer's and the whole gradient's; an estimate that is exactly zero counts
as cosine 0. Writes ``alignment.json``, ``order_alignment.png`` and ``depth_alignment.png`` to ``--out``
(default ``docs/figures``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import eproptax as ep

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import pyplot, save_figure  # noqa: E402

N_IN, N_OUT, BATCH = 8, 2, 4
LIF_DRIVE = 0.1  # mean input weight times sqrt(fan_in) of the first LIF layer (twice that above it)
SPIKING = ("lif", "alif")
DEPTHS = ("spatial", "collapsed", "full")


def mse(out, target):
    """Masked squared error of one example and one step."""
    return 0.5 * target["mask"] * jnp.sum((out - target["y"]) ** 2)


def make_model(cell: str, sizes: tuple, dtype):
    layers, n_in = [], N_IN
    for n in sizes:
        layers.append(
            {
                "lif": ep.cells.lif,
                "gru": ep.cells.gru,
                "rnn": ep.cells.rnn,
                "lstm": ep.cells.lstm,
                "alif": ep.cells.alif,
            }[cell](n_in, n, dtype=dtype)
        )
        n_in = n
    return ep.cells.stack(*layers, ep.cells.leaky_readout(n_in, N_OUT, dtype=dtype))


def draw(model, cell: str, seed: int, time_steps: int, gain: float, delay: int, dtype):
    """A random network on the delayed-copy task (see the module docstring)."""
    k_param, k_in = jax.random.split(jax.random.key(seed))
    params = list(model.init(k_param))
    for i, p in enumerate(params[:-1]):
        if cell in SPIKING:
            drive = (LIF_DRIVE if i == 0 else 2 * LIF_DRIVE) / np.sqrt(p["w_in"].shape[1])
            params[i] = {**p, "w_in": 0.3 * p["w_in"] + drive, "w_rec": gain * p["w_rec"]}
        else:
            params[i] = {k: ({**v, "kernel": gain * v["kernel"]} if k.startswith("h") else v) for k, v in p.items()}
    shape = (BATCH, time_steps, N_IN)
    if cell in SPIKING:
        inputs = (jax.random.uniform(k_in, shape) < 0.2).astype(dtype)
    else:
        inputs = jax.random.normal(k_in, shape, dtype)
    y = jnp.zeros((BATCH, time_steps, N_OUT), dtype).at[:, delay:].set(inputs[:, :-delay, :N_OUT])
    mask = jnp.zeros((BATCH, time_steps), dtype).at[:, delay:].set(1.0)
    return tuple(params), inputs, {"y": y, "mask": mask}


def activity(model, params, inputs):
    """Mean output of each recurrent layer over batch and time (the firing rate, for spiking layers)."""

    def one(x_seq):
        def body(carry, x):
            carry, _ = model.apply(params, carry, x)
            return carry, tuple(layer.output(c) for layer, c in zip(model.layers[:-1], carry[:-1]))

        return jax.lax.scan(body, model.init_carry(params), x_seq)[1]

    return [jnp.mean(z) for z in jax.vmap(one)(inputs)]


def _flat(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


def cosine(a, b) -> float:
    x, y = _flat(a), _flat(b)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return float(x @ y / (nx * ny)) if nx > 0 and ny > 0 else 0.0


def compile_rules(model, rules: dict):
    """One jitted function running BPTT and every rule (one compilation for the whole set)."""
    all_rules = {"bptt": ep.bptt(model, mse), **rules}
    return jax.jit(
        lambda p, x, y: ({name: rule(p, x, y)[1] for name, rule in all_rules.items()}, activity(model, p, x))
    )


def measure(fn, model, cell, names, seeds, time_steps, gain, delay, dtype):
    """Cosine of each rule with BPTT per seed: ``{rule: {"hidden": [...], "whole": [...], "first": [...]}}``,
    the mean output of each recurrent layer, and the seconds taken."""
    out = {name: {"hidden": [], "whole": [], "first": []} for name in names}
    rates, start = [], time.perf_counter()
    for seed in seeds:
        grads, act = fn(*draw(model, cell, seed, time_steps, gain, delay, dtype))
        ref = grads["bptt"]
        rates.append([float(a) for a in act])
        for name in names:
            g = grads[name]
            out[name]["hidden"].append(cosine(g[:-1], ref[:-1]))
            out[name]["whole"].append(cosine(g, ref))
            out[name]["first"].append(cosine(g[0], ref[0]))
    return out, np.mean(rates, axis=0).tolist(), time.perf_counter() - start


def summary(values):
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def order_sweep(args, dtype):
    records = []
    for cell in args.cells:
        for n in args.sizes:
            for T in args.lengths:
                model = make_model(cell, (n,), dtype)
                rules = {f"order {m}": ep.eprop_m(model, mse, m) for m in range(args.max_order + 1)}
                res, rates, seconds = measure(
                    compile_rules(model, rules),
                    model,
                    cell,
                    rules,
                    args.seed_list,
                    T,
                    args.gains[cell],
                    args.delay,
                    dtype,
                )
                for m in range(args.max_order + 1):
                    records.append(
                        dict(
                            cell=cell,
                            n=n,
                            T=T,
                            order=m,
                            rate=rates[0],
                            **{k: summary(v) for k, v in res[f"order {m}"].items()},
                        )
                    )
                line = " ".join(f"{np.mean(res[name]['hidden']):.3f}" for name in rules)
                print(
                    f"order  {cell:4s} n={n:3d} T={T:4d}: hidden-layer cosine, orders 0..{args.max_order}: {line}"
                    f"   (mean output {rates[0]:.3f}, {seconds:.1f} s)",
                    flush=True,
                )
    return records


def depth_sweep(args, dtype):
    records = []
    for cell in args.cells:
        for depth in range(1, args.max_depth + 1):
            model = make_model(cell, (args.depth_n,) * depth, dtype)
            rules = {d: ep.deep_eprop(model, mse, depth=d) for d in DEPTHS}
            fn = compile_rules(model, rules)
            for recurrence, gain in (("strong", args.gains[cell]), ("none", 0.0)):
                res, rates, seconds = measure(
                    fn, model, cell, rules, args.seed_list, args.depth_T, gain, args.delay, dtype
                )
                for d in rules:
                    records.append(
                        dict(
                            cell=cell,
                            layers=depth,
                            n=args.depth_n,
                            T=args.depth_T,
                            depth=d,
                            recurrence=recurrence,
                            gain=gain,
                            rates=rates,
                            **{k: summary(v) for k, v in res[d].items()},
                        )
                    )
                line = "  ".join(f"{d} {np.mean(res[d]['hidden']):.3f}/{np.mean(res[d]['first']):.3f}" for d in rules)
                print(
                    f"depth  {cell:4s} L={depth} R={gain:g}: hidden/first-layer cosine: {line}   (mean outputs "
                    f"{', '.join(f'{r:.3f}' for r in rates)}, {seconds:.1f} s)",
                    flush=True,
                )
    return records


def _trace_floats(rule, params) -> int:
    """Floats the online rule carries per example between steps (``state.traces``), from ``jax.eval_shape``."""
    state = jax.eval_shape(lambda p: rule.init(p, 1), params)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(state.traces))


def _seconds_per_step(fn, args, time_steps, repeats=3):
    """Minimum wall and CPU seconds per step of a jitted whole-sequence rule, after one compiling call."""
    jax.block_until_ready(fn(*args))
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall / time_steps, cpu / time_steps


def cost_sweep(args, dtype):
    """Memory carried per example (every order, every depth) and time per step of the batch (``n = depth_n``,
    ``T = depth_T``; 1 and 3 layers timed)."""
    records, n, T = [], args.depth_n, args.depth_T
    for cell in args.cells:
        for layers in range(1, args.max_depth + 1):
            model = make_model(cell, (n,) * layers, dtype)
            params = jax.eval_shape(model.init, jax.random.key(0))
            rules = {"bptt": (None, ep.bptt(model, mse))}
            if layers == 1:
                rules["rtrl"] = (ep.online.rtrl(model, mse), ep.rtrl(model, mse))
            if layers == 1:
                rules.update(
                    {
                        f"eprop_m({m})": (ep.online.eprop_m(model, mse, m), ep.eprop_m(model, mse, m))
                        for m in range(args.max_order + 1)
                    }
                )
            else:
                rules.update(
                    {
                        f"deep_eprop({d})": (
                            ep.online.deep_eprop(model, mse, depth=d),
                            ep.deep_eprop(model, mse, depth=d),
                        )
                        for d in DEPTHS
                    }
                )
            n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params[:-1]))
            data = draw(model, cell, 0, T, args.gains[cell], args.delay, dtype)
            for name, (online, whole) in rules.items():
                row = dict(
                    cell=cell,
                    layers=layers,
                    n=n,
                    rule=name,
                    recurrent_params=n_params,
                    batch=BATCH,
                    trace_floats=_trace_floats(online, params) if online is not None else None,
                )
                if whole is not None and layers in (1, 3) and not args.no_timing:
                    row["wall_s_per_step"], row["cpu_s_per_step"] = _seconds_per_step(jax.jit(whole), data, T)
                records.append(row)
                timing = f", {1e6 * row['cpu_s_per_step']:.0f} us CPU per step" if "cpu_s_per_step" in row else ""
                memory = f"{row['trace_floats']:7d} floats per example" if online is not None else "stores every step"
                print(f"cost   {cell:4s} L={layers} {name:20s}: {memory}{timing}", flush=True)
    return records


def plot_order(records, args, path):
    plt = pyplot()

    cells, lengths = args.cells, args.lengths
    fig, axes = plt.subplots(
        len(cells), len(lengths), figsize=(3.6 * len(lengths), 2.9 * len(cells)), sharey="row", squeeze=False
    )
    for i, cell in enumerate(cells):
        for j, T in enumerate(lengths):
            ax = axes[i][j]
            for n in args.sizes:
                rows = sorted(
                    (r for r in records if r["cell"] == cell and r["T"] == T and r["n"] == n), key=lambda r: r["order"]
                )
                ax.errorbar(
                    [r["order"] for r in rows],
                    [r["hidden"]["mean"] for r in rows],
                    yerr=[r["hidden"]["std"] for r in rows],
                    marker="o",
                    capsize=3,
                    label=f"n = {n}",
                )
            ax.set_title(f"{cell.upper()}, T = {T}")
            ax.set_xticks(range(args.max_order + 1))
            ax.grid(alpha=0.3)
            if i == len(cells) - 1:
                ax.set_xlabel("order m of eprop_m")
            if j == 0:
                ax.set_ylabel("cosine with BPTT\n(recurrent layer)")
    axes[0][-1].legend(loc="lower right")
    save_figure(
        fig,
        path,
        f"m-order e-prop: alignment with BPTT (mean ± std over {len(args.seed_list)} networks)",
        fontsize=12,
        dpi=120,
    )


def plot_depth(records, args, path):
    plt = pyplot()

    columns = [(cell, key) for cell in args.cells for key in ("hidden", "first")]
    fig, axes = plt.subplots(2, len(columns), figsize=(3.4 * len(columns), 6.0), sharex=True, squeeze=False)
    for i, recurrence in enumerate(("strong", "none")):
        for j, (cell, key) in enumerate(columns):
            ax = axes[i][j]
            for d, style in zip(DEPTHS, ("s--", "^:", "o-")):
                rows = sorted(
                    (r for r in records if r["cell"] == cell and r["depth"] == d and r["recurrence"] == recurrence),
                    key=lambda r: r["layers"],
                )
                ax.errorbar(
                    [r["layers"] for r in rows],
                    [r[key]["mean"] for r in rows],
                    yerr=[r[key]["std"] for r in rows],
                    fmt=style,
                    capsize=3,
                    label=d,
                )
            what = "all recurrent layers" if key == "hidden" else "first layer"
            within = f"R = {args.gains[cell]:g} x default" if recurrence == "strong" else "R = 0"
            ax.set_title(f"{cell.upper()}, {within}:\n{what}", fontsize=10)
            ax.set_xticks(range(1, args.max_depth + 1))
            ax.grid(alpha=0.3)
            if i == 1:
                ax.set_xlabel("recurrent layers")
            if j == 0:
                ax.set_ylabel("cosine with BPTT")
    axes[0][0].legend(loc="lower left")
    save_figure(
        fig,
        path,
        f"deep e-prop: alignment with BPTT against depth ({args.depth_n} neurons per layer, "
        f"T = {args.depth_T}, mean ± std over {len(args.seed_list)} networks); top: with within-layer "
        "recurrent weights R, bottom: without",
        dpi=120,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="n in {8, 16}, T in {20, 50}, up to 3 layers, 3 seeds, no timing"
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "figures"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--gain-lif",
        type=float,
        default=0.5,
        help="scale of the LIF recurrent weights (of the default N(0, 1/n)), default 0.5",
    )
    parser.add_argument(
        "--gain-gru",
        type=float,
        default=2.0,
        help="scale of the GRU recurrent kernels (of the default N(0, 1/n)), default 2",
    )
    parser.add_argument("--delay", type=int, default=5, help="delay of the copy task, in steps")
    parser.add_argument("--float32", action="store_true", help="float32 instead of float64")
    parser.add_argument("--skip-depth", action="store_true")
    parser.add_argument("--skip-order", action="store_true")
    parser.add_argument("--no-timing", action="store_true", help="report memory but do not time the rules")
    args = parser.parse_args(argv)
    args.cells = ("lif", "gru")
    args.sizes, args.lengths, args.max_order = (8, 16, 32), (20, 50, 100), 4
    args.max_depth, args.depth_n, args.depth_T = 4, 16, 50
    if args.quick:
        args.sizes, args.lengths, args.max_depth, args.seeds, args.no_timing = (8, 16), (20, 50), 3, 3, True
    args.seed_list = list(range(args.seeds))
    args.gains = {"lif": args.gain_lif, "gru": args.gain_gru}
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    os.makedirs(args.out, exist_ok=True)

    start = time.perf_counter()
    order = [] if args.skip_order else order_sweep(args, dtype)
    depth = [] if args.skip_depth else depth_sweep(args, dtype)
    costs = cost_sweep(args, dtype)
    settings = dict(
        cells=args.cells,
        sizes=args.sizes,
        lengths=args.lengths,
        max_order=args.max_order,
        max_depth=args.max_depth,
        depth_n=args.depth_n,
        depth_T=args.depth_T,
        seeds=args.seed_list,
        gains=args.gains,
        lif_drive=LIF_DRIVE,
        delay=args.delay,
        n_in=N_IN,
        n_out=N_OUT,
        batch=BATCH,
        dtype=np.dtype(dtype).name,
        quick=args.quick,
    )
    result = dict(
        settings=settings,
        jax=jax.__version__,
        platform=jax.devices()[0].platform,
        seconds=time.perf_counter() - start,
        order=order,
        depth=depth,
        costs=costs,
    )
    with open(os.path.join(args.out, "alignment.json"), "w") as f:
        json.dump(result, f, indent=1)
    if order:
        plot_order(order, args, os.path.join(args.out, "order_alignment.png"))
    if depth:
        plot_depth(depth, args, os.path.join(args.out, "depth_alignment.png"))
    print(f"wrote {os.path.abspath(args.out)} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
