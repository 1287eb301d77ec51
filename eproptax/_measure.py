"""What ``eproptax bench`` and ``benchmarks/`` measure with: the machine, the problems, one compiled program.

The machine's reference rates (:func:`bandwidth`, :func:`matmul_throughput`, :func:`hardware`), the device
attached to every figure (:func:`device_info`), the benchmark networks (:func:`problem`), the measurement
of one function (:func:`measure`: compile and run times, memory, XLA's cost), and the roofline of an
online rule's step (:func:`useful_work`, read from the rule's plan, and :func:`roofline`).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import cells
from ._cell import layers_of
from ._compare import Problem, spiking_problem
from ._engine import accum_dtype
from ._tricks import DEFAULT_UNROLL

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
