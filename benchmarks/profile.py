"""What binds one rule's step: the time of each compiled operation, and the work its loop fusions repeat.

Question: where does a step's time go, and which passes re-evaluate work per element? For one rule on one
network it runs the whole-sequence program under ``jax.profiler`` and sums, per operation (an XLA fusion,
a matrix product, a copy), its time per step, on each device the trace names (the host's thunks on CPU,
the kernels on a GPU). It then reads the compiled program (``compiled.as_text()``) and lists every loop
fusion whose output has at least ``--min-elements`` elements, with its shape and the number of operations
it evaluates per output element: a trace update should be a handful (decay times the old trace, plus a
coefficient times the presynaptic vector); dozens mean that XLA has fused the cell's derivatives into the
pass and evaluates them again for every synapse. Writes ``profile.json`` (one entry per network and rule,
kept across runs) to ``benchmarks/results/<device>/``.

    python benchmarks/profile.py --cell gru --rule "eprop (stateless readout)" --hidden 128 --batch 1
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, results_dir, save  # noqa: E402

from eproptax._bench import CELLS, RULES, build, problem  # noqa: E402

SPECS = {spec.name: spec for spec in RULES}
_FUSION = re.compile(r"^\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* fusion\(.*?kind=(\w+), calls=%([\w.-]+)")
_COMPUTATION = re.compile(r"^%([\w.-]+) [^\n]*\{\n(.*?)^\}", re.S | re.M)
_CONTAINERS = ("$", "ThunkExecutor", "PjitFunction")  # Python frames and the executor's own spans


def op_times(fn, args, steps, calls=3) -> dict:
    """Microseconds per step of each named operation in a ``jax.profiler`` trace of ``calls`` calls,
    grouped by the trace's processes (``/host:CPU``, ``/device:GPU:0``, ...); Python frames and the spans
    that enclose the operations (the executor's, the jitted call's) left out."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        paths = glob.glob(os.path.join(logdir, "**", "*trace.json.gz"), recursive=True)
        with gzip.open(sorted(paths)[0]) as f:
            events = json.load(f)["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    total = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(_CONTAINERS):
            total[names.get(e["pid"], str(e["pid"]))][e["name"]] += e["dur"]
    return {proc: {name: us / (calls * steps) for name, us in ops.most_common()} for proc, ops in total.items()}


def loop_fusions(hlo: str, min_elements: int) -> list[dict]:
    """The fusions of ``hlo`` (compiled HLO text) with at least ``min_elements`` output elements: name,
    kind, shape and the number of instructions in the fused computation (operations per element)."""
    bodies = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo)}
    rows = []
    for line in hlo.splitlines():
        m = _FUSION.match(line)
        if not m:
            continue
        shape = tuple(int(d) for d in m.group(2).split(",") if d)
        size = 1
        for d in shape:
            size *= d
        if size >= min_elements:
            body = bodies.get(m.group(4), "")
            ops = sum(1 for op in body.splitlines() if op.strip().startswith(("%", "ROOT")) and " parameter(" not in op)
            rows.append(dict(name=m.group(1), kind=m.group(3), shape=shape, ops_per_element=ops))
    return rows


def main(argv=None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--cell", choices=CELLS + ("rnn",), default="gru")
    p.add_argument("--rule", choices=list(SPECS), default="eprop (stateless readout)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--top", type=int, default=12, help="operations listed per device")
    p.add_argument(
        "--min-elements",
        type=int,
        default=None,
        help="list the fusions with at least this many output elements (default: batch x hidden^2, "
        "about one per-synapse array)",
    )
    args = p.parse_args(argv)
    spec = SPECS[args.rule]
    prob = problem(
        args.cell, readout=spec.readout, layers=spec.layers, hidden=args.hidden, batch=args.batch, time_steps=args.steps
    )
    fn, _ = build(spec, prob)
    call = (prob.params, prob.inputs, prob.targets)
    compiled = jax.jit(fn).lower(*call).compile()
    times = op_times(compiled, call, args.steps)
    fusions = loop_fusions(compiled.as_text(), args.min_elements or args.hidden**2 * args.batch)
    key = f"{args.cell}({args.hidden}) batch {args.batch}: {args.rule}"
    print(f"{key}, T={args.steps}: microseconds per step of each operation")
    for proc, ops in times.items():
        print(f"  {proc}")
        for name, us in list(ops.items())[: args.top]:
            print(f"    {us:10.1f}  {name}")
    print("fusions over trace-sized arrays (operations evaluated per output element):")
    for f in fusions:
        print(f"  {f['name']:32s} {f['kind']:8s} {str(list(f['shape'])):24s} {f['ops_per_element']:4d}")
    path = os.path.join(results_dir(args.out), "profile.json")
    previous = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f).get("profiles", {})
    entry = dict(
        cell=args.cell,
        rule=args.rule,
        hidden=args.hidden,
        batch=args.batch,
        time_steps=args.steps,
        us_per_step={proc: dict(list(ops.items())[: args.top]) for proc, ops in times.items()},
        fusions=fusions,
    )
    print(f"wrote {save('profile', dict(profiles={**previous, key: entry}), args.out)}")


if __name__ == "__main__":
    main()
