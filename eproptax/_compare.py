"""``eproptax compare``: every rule's gradient against BPTT on a default spiking network, and its speed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import cells
from ._cli import HelpFormatter, UsageError, positive_int, seed
from ._eprop import random_feedback
from ._registry import RULES, keyed, make_rule


class Problem(NamedTuple):
    """A model, its parameters, a batch and a loss: what a rule needs to be measured."""

    model: cells.Cell
    params: object
    inputs: jax.Array
    targets: object
    loss: Callable


def mse(out, target):
    """Masked squared error: ``0.5 * mask * sum (out - y)^2`` with ``target = {"y": ..., "mask": ...}``."""
    return 0.5 * target["mask"] * jnp.sum((out - target["y"]) ** 2)


def spiking_problem(
    *, n_in=20, n_rec=32, n_out=2, layers=1, time_steps=100, batch=8, cell="lif", seed=0, rate=0.05, dtype=jnp.float32
) -> Problem:
    """A default spiking network: ``layers`` LIF (or ALIF) layers and a leaky readout, regressing sines.

    Inputs are Poisson spikes of ``rate`` per step; input weights are scaled so that the neurons fire.
    """
    make = {"lif": cells.lif, "alif": cells.alif}[cell]
    stack = [make(n_in if i == 0 else n_rec, n_rec, dtype=dtype) for i in range(layers)]
    model = cells.stack(*stack, cells.leaky_readout(n_rec, n_out, dtype=dtype))
    k_param, k_in, k_phase = jax.random.split(jax.random.key(seed), 3)
    params = model.init(k_param)
    params = tuple({**p, "w_in": 8.0 * p["w_in"], "w_rec": 2.0 * p["w_rec"]} if "w_rec" in p else p for p in params)
    inputs = (jax.random.uniform(k_in, (batch, time_steps, n_in)) < rate).astype(dtype)
    t = jnp.arange(time_steps, dtype=dtype)
    phase = jax.random.uniform(k_phase, (batch, 1, n_out), dtype) * 2 * jnp.pi
    y = jnp.sin(2 * jnp.pi * t[None, :, None] / 50.0 + phase)
    mask = jnp.ones((batch, time_steps), dtype)
    return Problem(model, params, inputs, {"y": y, "mask": mask}, mse)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def alignment(grads, reference):
    """Cosine similarity and relative error of ``grads`` against ``reference`` (whole parameter vector)."""
    g, r = _flat(grads), _flat(reference)
    cosine = jnp.dot(g, r) / (jnp.linalg.norm(g) * jnp.linalg.norm(r))
    return float(cosine), float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))


def time_per_step(fn, *args, repeats=3):
    """Minimum wall time of ``fn(*args)`` after compilation, and the first call's time (compilation included)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_time = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best, compile_time


def rules_for(problem: Problem, *, include_rtrl=True) -> dict:
    """Every rule of the library, by display name, configured for ``problem``, built from the registry.

    The rules of ``ep.rules`` in order, ``eprop`` also with random feedback, ``eprop_m`` at orders 0 to 2,
    ``deep_eprop`` at each depth on a stack (only ``"full"`` on one layer, where every depth is ``eprop``);
    a rule registered without an entry here is compared at its defaults, and a rule that draws noise
    (``uoro``) at one fixed key (:func:`~eproptax._registry.keyed`).
    """
    model, loss = problem.model, problem.loss
    depth = len(cells.stack(model).layers) - 1
    n_rec, n_out = model.layers[-2].n_out, model.n_out
    random_b = random_feedback(jax.random.key(1), n_rec, n_out, problem.inputs.dtype)
    variants = {  # rule -> [(display name, options)]
        "rtrl": [("rtrl", {})] if include_rtrl else [],
        "eprop": [("eprop", {}), ("eprop (random B)", {"feedback": random_b})],
        "eprop_m": [(RULES["eprop_m"].label({"order": m}), {"order": m}) for m in (0, 1, 2)],
        "deep_eprop": [
            (RULES["deep_eprop"].label({"depth": d}, keys=False), {"depth": d})
            for d in (("spatial", "collapsed", "full") if depth > 1 else ("full",))
        ],
    }
    return {
        label: keyed(info, make_rule(name, model, loss, **options))
        for name, info in RULES.items()
        for label, options in variants.get(name, [(info.label(), {})])
    }


def compare(problem: Problem, *, include_rtrl=True, repeats=3) -> list[dict]:
    """Runs every rule on ``problem``; returns rows with alignment to BPTT and timings."""
    rules = rules_for(problem, include_rtrl=include_rtrl)
    steps = problem.inputs.shape[1]
    rows, reference = [], None
    for name, rule in rules.items():
        fn = jax.jit(rule)
        best, compile_time = time_per_step(fn, problem.params, problem.inputs, problem.targets, repeats=repeats)
        _, grads = fn(problem.params, problem.inputs, problem.targets)
        if reference is None:
            reference = grads
        cosine, rel = alignment(grads, reference)
        rows.append(
            dict(rule=name, cosine=cosine, rel_error=rel, ms_per_step=1e3 * best / steps, compile_s=compile_time)
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'rule':24s} {'cos(BPTT)':>10s} {'rel.err':>10s} {'ms/step':>9s} {'compile s':>10s}"]
    for r in rows:
        lines.append(
            f"{r['rule']:24s} {r['cosine']:10.4f} {r['rel_error']:10.2e} {r['ms_per_step']:9.4f} {r['compile_s']:10.2f}"
        )
    return "\n".join(lines)


def run(args) -> int:
    if args.rules == "all":
        from ._taxonomy import run as run_all  # the taxonomy's map (it imports this module)

        return run_all(args)
    if args.out is not None:
        raise UsageError("--out: only with --rules all (the default comparison prints its tables)")
    print(
        f"eproptax compare on {jax.devices()[0].platform} (jax {jax.__version__}), float32; gradient "
        "alignment with BPTT, wall time per step after compilation (min of 3)."
    )
    for layers in (1, args.layers):
        problem = spiking_problem(
            n_in=args.n_in,
            n_rec=args.hidden,
            layers=layers,
            time_steps=args.steps,
            batch=args.batch,
            cell=args.cell,
            seed=args.seed,
        )
        print(f"\n{layers} x {args.cell.upper()}({args.hidden}) + leaky readout, T={args.steps}, batch={args.batch}")
        print(format_rows(compare(problem, include_rtrl=not args.no_rtrl)))
    return 0


def add_parser(sub) -> None:
    """Adds ``eproptax compare`` to ``sub``; its sizes are positive integers, checked while parsing."""
    p = sub.add_parser(
        "compare",
        help="compare every rule's gradient with BPTT on a default spiking network",
        description="Every rule's gradient against BPTT (cosine, relative error) and its time per step, on a "
        "one-layer and a --layers-layer spiking network. A misuse exits with status 2 and one error line.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--cell", choices=["lif", "alif"], default="lif", help="spiking cell of the recurrent layers")
    p.add_argument("--hidden", type=positive_int, default=32, metavar="N", help="neurons per recurrent layer")
    p.add_argument("--n-in", type=positive_int, default=20, metavar="N", help="Poisson input channels")
    p.add_argument(
        "--layers",
        type=positive_int,
        default=2,
        metavar="N",
        help="recurrent layers of the second network (deep e-prop)",
    )
    p.add_argument("--steps", type=positive_int, default=100, metavar="T", help="time steps of the sequence")
    p.add_argument("--batch", type=positive_int, default=8, metavar="N", help="sequences per batch")
    p.add_argument("--seed", type=seed, default=0, help="jax.random.key seed, 0 to 2**32 - 1")
    p.add_argument("--no-rtrl", action="store_true", help="skip RTRL (its cost grows as n^4)")
    p.add_argument(
        "--rules",
        choices=["default", "all"],
        default="default",
        help="'all': every rule on the taxonomy's axes on LIF, ALIF, GRU and LSTM networks (one layer of --hidden "
        "neurons, --steps, --batch; docs/taxonomy.md)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="with --rules all: write taxonomy.json and .png here")
    p.set_defaults(func=run)
