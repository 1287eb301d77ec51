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

The helpers here (:func:`problem`, :func:`measure`, :func:`hardware`, :func:`rule_rows`, :func:`roofline`)
are shared with the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import cells
from ._cell import layers_of
from ._compare import Problem, alignment, spiking_problem
from ._engine import accum_dtype, sequence_loss
from ._registry import RULES as REGISTRY
from ._registry import make_rule
from ._tricks import DEFAULT_UNROLL

CELLS = ("lif", "alif", "lstm", "gru")
MIB = 2.0**20


# ----------------------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """A short name for the default device, used to name results folders: ``cpu``, ``nvidia-h100...``."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return "cpu"
    return "-".join(str(d.device_kind).lower().replace("_", " ").split())


def device_info() -> dict:
    """Device, JAX version, host and its load, and the rules' default ``unroll`` per platform: attached to
    every figure written."""
    d = jax.devices()[0]
    return dict(
        device=device_name(),
        platform=d.platform,
        device_kind=str(d.device_kind),
        jax=jax.__version__,
        jaxlib=getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        cpu=_cpu_model(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        load_average=_load_average(),
        eproptax=_source_version(),
        default_unroll=dict(DEFAULT_UNROLL),
    )


def _source_version():
    """The git commit of the eproptax sources measured, with ``+dirty`` when they have uncommitted edits."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "eproptax"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except Exception:
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _load_average():
    """The host's 1-minute load average when measured: timings on a shared machine are only as good as it."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover
        return None


def _best_times(fn, *args, repeats, min_seconds=0.25, max_repeats=50, max_seconds=2.0):
    """Minimum wall time and minimum process CPU time over at least ``repeats`` runs, more (up to
    ``max_repeats``) until ``min_seconds`` have been spent: cheap programs get more samples; expensive
    ones stop after ``max_seconds`` (at least one run).

    The CPU time (all threads of this process) is what the run would take on an idle machine when XLA
    runs it on one thread; on a shared machine the wall time also counts the time other processes held
    the cores.
    """
    best, best_cpu, spent, count = float("inf"), float("inf"), 0.0, 0
    while (count < repeats and (count == 0 or spent < max_seconds)) or (spent < min_seconds and count < max_repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        best, best_cpu, spent, count = min(best, elapsed), min(best_cpu, cpu), spent + elapsed, count + 1
    return best, best_cpu


def _best_time(fn, *args, repeats):
    return _best_times(fn, *args, repeats=repeats)[0]


def bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> dict:
    """Memory bandwidth: bytes read and written per second by an in-place scale of a large float32 array.

    The buffer is donated, so every call reads and writes the same memory: a fresh output buffer per call
    would also measure the operating system's first-touch page faults (on this project's CPU machine those
    cut a 256 MiB copy to under 2 GB/s). This is the ``x + 0`` copy bound of a trace update, which reads
    and writes every trace once per step.
    """
    n = nbytes // 4
    fn = jax.jit(lambda x: x * jnp.float32(1.0000001), donate_argnums=0)
    x = jax.block_until_ready(fn(jnp.ones((n,), jnp.float32)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - start)
    return dict(bytes=int(4 * n), seconds=best, bytes_per_s=2 * 4 * n / best)


def matmul_throughput(sizes=(256, 512, 1024), flops_per_call: float = 4e9, repeats: int = 3) -> dict:
    """float32 matmul throughput: the best FLOP/s of a chain of square products inside one jitted loop.

    The chain (``c = c @ b`` in a ``fori_loop``) keeps every buffer inside the program, so no call pays
    for allocating its output. Returns the best rate over ``sizes`` and each size's rate.
    """
    rates = {}
    for n in sizes:
        reps = max(1, int(flops_per_call / (2 * n**3)))
        b = jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / np.sqrt(n)
        fn = jax.jit(lambda a, b, reps=reps: jax.lax.fori_loop(0, reps, lambda i, c: c @ b, a))
        jax.block_until_ready(fn(b, b))
        rates[n] = 2 * n**3 * reps / _best_time(fn, b, b, repeats=repeats)
    return dict(flops_per_s=max(rates.values()), by_size={str(k): v for k, v in rates.items()})


def hardware(*, quick: bool = False) -> dict:
    """The machine's bandwidth and matmul throughput, measured with jax (see :func:`bandwidth`)."""
    bw = bandwidth(64 * 2**20 if quick else 256 * 2**20)
    mm = matmul_throughput((256, 512) if quick else (256, 512, 1024), flops_per_call=2e9 if quick else 4e9)
    return dict(bandwidth=bw, matmul=mm)


# ----------------------------------------------------------------------------------------------------------
# Problems and measurements
# ----------------------------------------------------------------------------------------------------------


def problem(
    cell: str = "lif",
    *,
    readout: str = "leaky",
    layers: int = 1,
    n_in: int = 16,
    hidden: int = 32,
    n_out: int = 2,
    time_steps: int = 100,
    batch: int = 8,
    seed: int = 0,
    dtype=jnp.float32,
) -> Problem:
    """A benchmark network: ``layers`` recurrent layers of ``cell`` and a ``"leaky"`` or ``"stateless"`` readout.

    Inputs, targets and the loss are those of :func:`~eproptax._compare.spiking_problem` (Poisson spikes,
    sines, masked squared error) for every cell, and so are the (scaled) spiking weights, so every network
    sees the same task.
    """
    if cell not in ("lif", "alif", "lstm", "gru", "rnn"):
        raise ValueError(f"problem: `cell` must be one of lif, alif, lstm, gru, rnn, got {cell!r}.")
    if readout not in ("leaky", "stateless"):
        raise ValueError(f"problem: `readout` must be 'leaky' or 'stateless', got {readout!r}.")
    base = spiking_problem(
        n_in=n_in,
        n_rec=hidden,
        n_out=n_out,
        layers=layers,
        time_steps=time_steps,
        batch=batch,
        cell=cell if cell in ("lif", "alif") else "lif",
        seed=seed,
        dtype=dtype,
    )
    recurrent, params = list(layers_of(base.model)[:-1]), list(base.params[:-1])
    if cell not in ("lif", "alif"):
        make = {"lstm": cells.lstm, "gru": cells.gru, "rnn": cells.rnn}[cell]
        recurrent = [make(n_in if i == 0 else hidden, hidden, dtype=dtype) for i in range(layers)]
        keys = jax.random.split(jax.random.key(seed + 1), layers)
        params = [layer.init(k) for layer, k in zip(recurrent, keys)]
    if readout == "leaky":
        top, top_params = layers_of(base.model)[-1], base.params[-1]
    else:
        top = cells.readout(hidden, n_out, dtype=dtype)
        top_params = top.init(jax.random.key(seed + 2))
    return Problem(cells.stack(*recurrent, top), tuple(params) + (top_params,), base.inputs, base.targets, base.loss)


def _memory(compiled) -> dict | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        stats = None
    if stats is None:
        return None
    get = lambda name: int(getattr(stats, name, 0) or 0)
    out = dict(
        temp=get("temp_size_in_bytes"),
        argument=get("argument_size_in_bytes"),
        output=get("output_size_in_bytes"),
        alias=get("alias_size_in_bytes"),
        code=get("generated_code_size_in_bytes"),
    )
    out["peak"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def _cost(compiled) -> dict:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return dict(flops=None, bytes_accessed=None)
    return dict(flops=cost.get("flops"), bytes_accessed=cost.get("bytes accessed"))


def measure(
    fn: Callable,
    *args,
    repeats: int = 3,
    steps: int = 1,
    cache: dict | None = None,
    name: str = "",
    execute: bool = True,
) -> tuple[dict, object]:
    """Compiles ``fn`` for ``args`` and times it; returns ``(figures, outputs)``.

    Figures: ``lower_s`` and ``compile_s`` (``jax.jit(fn).lower(*args)`` and ``.compile()``, timed apart;
    ``compile_cpu_s`` is the compile's process CPU time, robust to other processes on a shared machine),
    ``seconds`` (minimum wall time over at least ``repeats`` runs after a warm-up run, more for cheap
    programs; ``repeats=0`` runs once and times nothing, ``execute=False`` only compiles),
    ``per_step_s = seconds / steps`` and ``per_step_cpu_s`` (the same from the process CPU time),
    ``memory`` (XLA's memory analysis of the compiled program, bytes; ``None`` where the backend has none),
    and ``xla`` (XLA's cost analysis: ``flops`` and ``bytes_accessed``; a ``while`` loop's body is counted
    once, so for a scan over time these are per-step figures). ``cache`` (a dict) reuses the executable
    of a program whose lowered text is identical to one compiled before (under another ``name``), and
    says so in ``same_as``: identical programs are compiled once.
    """
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lower_s = time.perf_counter() - start
    key = hash(lowered.as_text()) if cache is not None else None
    same_as = None
    if cache is not None and key in cache:
        compiled, compile_s, compile_cpu_s, same_as = cache[key]
    else:
        start, start_cpu = time.perf_counter(), time.process_time()
        compiled = lowered.compile()
        compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        if cache is not None:
            cache[key] = (compiled, compile_s, compile_cpu_s, name)
    outputs = jax.block_until_ready(compiled(*args)) if execute else None
    seconds, cpu_seconds = (None, None)
    if execute and repeats > 0:
        seconds, cpu_seconds = _best_times(compiled, *args, repeats=repeats)
    figures = dict(
        lower_s=lower_s,
        compile_s=compile_s,
        compile_cpu_s=compile_cpu_s,
        seconds=seconds,
        per_step_s=None if seconds is None else seconds / steps,
        per_step_cpu_s=None if cpu_seconds is None else cpu_seconds / steps,
        memory=_memory(compiled),
        xla=_cost(compiled),
        same_as=same_as,
    )
    return figures, outputs


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(tree)))


def influence_shape(state) -> tuple[int, int, int]:
    """RTRL's influence as ``(batch, C, P)``: ``M^T`` per example, stored as one block of columns per layer
    (a neuron layer's shaped as its effective weights, ``(n, k, m)``), ``P`` the columns of all blocks
    together. The useful work counts ``|theta|`` instead, which the structural zeros of the effective
    weights make smaller."""
    batch, n_carry = state.traces[0].shape[:2]
    return batch, n_carry, sum(math.prod(block.shape[2:]) for block in state.traces)


def useful_work(online, prob: Problem, kind: str) -> dict:
    """The minimum work of one step of an online rule, as its plan reports it (``online.plan.cost``): the
    bytes it must move (its state read and written once) and the matmul FLOPs it must do (RTRL's
    ``2 B |theta| C^2``; a dense level of the e-prop family pushed from a dense source, ``2 B n_l k_l P
    n_src``; 0 for elementwise trace updates). ``kind`` is kept for the callers; a rule without a plan
    counts its state's bytes and no FLOPs."""
    batch, itemsize = prob.inputs.shape[0], jnp.dtype(accum_dtype(prob.params)).itemsize
    if online.plan is not None:
        cost = online.plan.cost(batch, itemsize)
        return dict(state_bytes=cost.state_bytes, bytes=cost.bytes, flops=cost.flops)
    state = jax.eval_shape(lambda params: online.init(params, batch), prob.params)
    return dict(state_bytes=_tree_bytes(state), bytes=2 * _tree_bytes(state), flops=0.0)


def roofline(online, prob: Problem, kind: str, per_step_s: float | None, hw: dict) -> dict:
    """The step's :func:`useful_work`, which bound binds it, and the fraction of that bound it reaches.

    ``roofline_fraction = max(bytes / bandwidth, flops / matmul rate) / per_step_s``: 1 would be a step
    as fast as the machine allows for the work it must do.
    """
    work = useful_work(online, prob, kind)
    t_bytes = work["bytes"] / hw["bandwidth"]["bytes_per_s"]
    t_flops = work["flops"] / hw["matmul"]["flops_per_s"]
    out = dict(work=work, bound="matmul" if t_flops > t_bytes else "bandwidth")
    if per_step_s:
        out.update(
            roofline_fraction=max(t_bytes, t_flops) / per_step_s,
            achieved_bytes_per_s=work["bytes"] / per_step_s,
            achieved_flops_per_s=work["flops"] / per_step_s,
        )
    return out


class RuleSpec(NamedTuple):
    """One row of the benchmark: a rule configured on a network variant."""

    name: str
    layers: int  # recurrent layers of the network it runs on
    readout: str  # "leaky" or "stateless"
    kind: str  # "forward", "bptt", "rtrl", "traces", or "other" (a rule without a model of its useful work)
    rule: Callable  # (model, loss, **options) -> the public whole-sequence function, with its defaults
    online: Callable | None = None  # (model, loss) -> its online rule (state size and roofline)


def build(spec: RuleSpec, prob: Problem, **options):
    """``(fn, online)`` for a row: the public rule as a user calls it (its default ``unroll`` included,
    or ``options``), and its online form (``None`` for forward and BPTT)."""
    fn = spec.rule(prob.model, prob.loss, **options)
    return fn, (spec.online(prob.model, prob.loss) if spec.online else None)


def _spec(name: str, layers: int, readout: str, kind: str, rule: str, **options) -> RuleSpec:
    """A row running the registered rule ``rule`` with ``options`` (``ep.make_rule``) on a network variant."""
    grad_fn = functools.partial(make_rule, rule, **options)
    online = functools.partial(make_rule, rule, online=True, **options) if REGISTRY[rule].online_form else None
    return RuleSpec(name, layers, readout, kind, grad_fn, online if kind in ("rtrl", "traces") else None)


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
    _spec("bptt (2 layers)", 2, "leaky", "bptt", "bptt"),
    *(
        _spec(REGISTRY["deep_eprop"].label({"depth": d}, keys=False), 2, "leaky", "traces", "deep_eprop", depth=d)
        for d in ("spatial", "full")
    ),
)
_COVERED = {spec.rule.args[0] for spec in _MEASURED if isinstance(spec.rule, functools.partial)}  # rule names
RULES = _MEASURED + tuple(_spec(name, 1, "leaky", "other", name) for name in REGISTRY if name not in _COVERED)
"""The benchmark's rows: every rule of ``ep.rules`` (a rule registered without a row here runs at its defaults
on the one-layer leaky network, without a roofline), with the forward pass and the network variants."""


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
        if online is not None:
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
    out = args.out or os.path.join("results", f"bench-{info['device']}")
    start = time.perf_counter()
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


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time, memory and gradient quality of every rule on LIF/ALIF/LSTM/GRU "
        "networks, against the forward pass and the machine's limits",
    )
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--n-in", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rtrl-max-hidden", type=int, default=32, help="skip RTRL above this hidden size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--full",
        action="store_true",
        help="every variant (stateless readout, two layers) on every "
        "cell, not only on the first (about four times longer)",
    )
    p.add_argument(
        "--quick", action="store_true", help="one-layer leaky-readout networks only, smaller reference arrays"
    )
    p.add_argument("--out", default=None, help="results folder (default results/bench-<device>)")
    p.set_defaults(func=run)
