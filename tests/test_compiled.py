"""The speed tricks, read from the compiled CPU program: each test fails when one stops having its effect.

The library's speed rests on a few tricks that change no value, only how XLA compiles the arithmetic, so no
test of values can see one stop working; these tests read the compiled program instead (the HLO text of
``jax.jit(fn).lower(...).compile()`` and its ``memory_analysis()``), on float32 networks of each cell (LIF,
ALIF, LSTM, GRU) under a leaky and a stateless readout, small enough to compile in a few seconds and large
enough that XLA makes the choices the tricks are for. The sequences are short (:data:`SIZES`), so gated
networks compile the stepping program, not the chunked view (``ep.DEFAULT_CHUNK``).

* :func:`test_no_trace_copy_in_loop` guards the in-place trace update of level-0 e-prop: the new traces are
  computed after every other reader of the previous ones (``written_after``, an artificial data dependency)
  and stored neuron-major, ``(n, B, k, m)``, so that XLA writes them into the loop-carried buffers in
  place. Without that, XLA copies a trace every step: a trace-sized ``copy`` (or a fusion that only moves
  data) inside the loop. :func:`test_uoro_updates_its_parameter_factor_in_place` guards the same trick in
  UORO, whose gradient reads the parameter factor ``theta~`` that its update overwrites.
* :func:`test_blocks_formed_once` guards ``formed_once``: the per-neuron Jacobian blocks and presynaptic
  vectors are formed once per step, at their own size, not re-evaluated by every per-synapse pass for
  every trace element. Without it the fusions that write the traces hold several times more operations.
* :func:`test_temporaries_bounded_by_state` guards the online rules' memory: the whole-sequence
  program's temporaries are at most :data:`TEMP_PER_STATE` times the online state, whatever ``T``.

The tests' docstrings and the bounds' comments give the values measured when they were set, with each trick
on and switched off (in a scratch copy of the package, never here: the tests patch nothing, so they survive
the engine's modules being reorganised). docs/design.md says why each trick exists.
"""

from __future__ import annotations

import functools
import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import eproptax as ep
import eproptax._tricks
from eproptax._bench import problem

CELLS = ("lif", "alif", "lstm", "gru")
READOUTS = ("leaky", "stateless")
NETWORKS = [(cell, readout) for cell in CELLS for readout in READOUTS]
NETWORK_IDS = [f"{cell}+{readout}" for cell, readout in NETWORKS]

# One recurrent layer of 32 neurons, 16 inputs, batch 8 (float32, the default of ``_bench.problem``): the
# sizes at which a trace copy appears without ``written_after`` and the blocks are re-evaluated per element
# without ``formed_once``. T = 12 < DEFAULT_CHUNK["cpu"], so the stepping program is compiled.
SIZES = dict(n_in=16, hidden=32, time_steps=12, batch=8)

# The whole-sequence rules and their online forms, by name.
RULES = {
    "eprop": (ep.eprop, ep.online.eprop),
    "eprop_m1": (lambda model, loss: ep.eprop_m(model, loss, 1), lambda model, loss: ep.online.eprop_m(model, loss, 1)),
    "deep_eprop_full": (
        lambda model, loss: ep.deep_eprop(model, loss, depth="full"),
        lambda model, loss: ep.online.deep_eprop(model, loss, depth="full"),
    ),
}

# ----------------------------------------------------------------------------------------------------------
# Compiled programs, one per (rule, network), shared by every test
# ----------------------------------------------------------------------------------------------------------


class Program(NamedTuple):
    hlo: str  # the compiled HLO text
    temp_bytes: int  # memory_analysis().temp_size_in_bytes
    state_bytes: int  # bytes of the online state, rule.init(params, batch)
    trace_sizes: frozenset  # element counts of the per-synapse trace arrays in the online state


def compile_program(rule: str, cell: str, readout: str) -> Program:
    """The compiled whole-sequence program of ``rule`` on a network, and its online state's sizes.

    The per-synapse traces are the leaves of the state's ``traces`` with three or more axes: compact traces
    stored neuron-major, ``(n, B, k, m)`` or ``(n, B, m)`` for ``k = 1``, filtered traces, dense levels.
    The presynaptic traces ``(B, m)`` are left out: as small as a layer's carry, they are not what a copy
    per step would cost, and their element counts could match an unrelated small array's.
    """
    prob = problem(cell, readout=readout, **SIZES)
    whole, online = RULES[rule]
    compiled = jax.jit(whole(prob.model, prob.loss)).lower(prob.params, prob.inputs, prob.targets).compile()
    state = jax.eval_shape(lambda params: online(prob.model, prob.loss).init(params, SIZES["batch"]), prob.params)
    leaves = jax.tree_util.tree_leaves(state)
    sizes = frozenset(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(state.traces) if leaf.ndim >= 3)
    return Program(
        hlo=compiled.as_text(),
        temp_bytes=int(compiled.memory_analysis().temp_size_in_bytes),
        state_bytes=sum(leaf.size * leaf.dtype.itemsize for leaf in leaves),
        trace_sizes=sizes,
    )


program = functools.cache(compile_program)

# ----------------------------------------------------------------------------------------------------------
# A small reader of HLO text
# ----------------------------------------------------------------------------------------------------------

# A computation: ``[ENTRY ]%name (params) -> shape {`` ... ``}`` (the closing brace alone on its line).
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.-]+) [^\n]*\{\n(.*?)^\}", re.S | re.M)
# An instruction: ``[ROOT ]%name = shape opcode(operands), attributes``; the shape is an array
# (``f32[32,8,49]{2,1,0}``) or a tuple of arrays, which holds no `` word(``, so the first one is the opcode.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (.+?) ([a-z][\w-]*)\((.*)$", re.M)
_ARRAY = re.compile(r"[a-z]\w*\[([\d,]*)\]")
# The computations an instruction calls: a fusion's ``calls=``, a while's ``body=``/``condition=``, a
# reduction's ``to_apply=``, a conditional's ``branch_computations={...}``.
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|\w+_computations?)=\{?(%[\w.-]+(?:, %[\w.-]+)*)")
# Opcodes that only move data: a fusion made of these alone is a copy.
_MOVES = {"parameter", "bitcast", "copy", "transpose", "reshape"}


class Instruction(NamedTuple):
    name: str
    op: str
    sizes: tuple  # element count of each array of the result (one for an array, several for a tuple)
    called: tuple  # names of the computations it calls


def _instructions(body: str) -> list[Instruction]:
    out = []
    for name, shape, op, rest in _INSTRUCTION.findall(body):
        sizes = tuple(math.prod(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(shape))
        called = tuple(c for group in _CALLED.findall(rest) for c in re.findall(r"%([\w.-]+)", group))
        out.append(Instruction(name, op, sizes, called))
    return out


@functools.cache
def parse(hlo: str) -> dict[str, list[Instruction]]:
    """Every computation of a compiled module, by name, as its list of instructions."""
    return {name: _instructions(body) for name, body in _COMPUTATION.findall(hlo)}


def loop_computations(hlo: str) -> list[str]:
    """The computations that run every iteration of a ``while`` loop (its body, what the body calls and
    nested loops), fused computations excepted: those are the fusions' insides, read through the fusion."""
    comps = parse(hlo)
    todo = [c for inst in (i for body in comps.values() for i in body) if inst.op == "while" for c in inst.called]
    seen = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        todo += [c for inst in comps[name] if inst.op != "fusion" for c in inst.called]
    assert seen, "no while loop in the compiled program"
    return seen


def loop_fusions(hlo: str) -> list[tuple[Instruction, list[Instruction]]]:
    """Every fusion run inside a loop, with the instructions of its fused computation."""
    comps = parse(hlo)
    return [
        (inst, comps[inst.called[0]]) for name in loop_computations(hlo) for inst in comps[name] if inst.op == "fusion"
    ]


def trace_copies(prog: Program) -> list[str]:
    """The trace-sized copies inside the loop: a ``copy``, ``copy-start`` or ``transpose`` instruction whose
    result has as many elements as a per-synapse trace, or a fusion of such a size that only moves data.

    A copy inside a fusion that computes (a layout change fused into the trace update, say) is not one: it
    writes no buffer of its own; the fusion's output is the update itself.
    """
    comps = parse(prog.hlo)
    found = []
    for name in loop_computations(prog.hlo):
        for inst in comps[name]:
            if not prog.trace_sizes.intersection(inst.sizes):
                continue
            if inst.op in ("copy", "copy-start", "transpose"):
                found.append(f"{inst.op} {inst.name} in {name}")
            elif inst.op == "fusion" and all(i.op in _MOVES for i in comps[inst.called[0]]):
                found.append(f"data-movement fusion {inst.name} in {name}")
    return found


def ops_per_trace_element(prog: Program) -> int:
    """The instructions (parameters excepted) of the largest fusion inside the loop with a trace-sized
    output: the operations XLA evaluates per element of a trace, the update or a filter of it."""
    counts = [
        sum(1 for i in fused if i.op != "parameter")
        for inst, fused in loop_fusions(prog.hlo)
        if prog.trace_sizes.intersection(inst.sizes)
    ]
    assert counts, "no fusion inside the loop writes a trace-sized array"
    return max(counts)


# ----------------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------------


def test_reader_sees_a_copy_in_a_loop():
    """The reader finds the copy XLA must make when a loop keeps an array and its new value (a control for
    :func:`test_no_trace_copy_in_loop`, which passes when it finds nothing)."""

    def swap(a, b):
        return jax.lax.scan(lambda carry, _: ((2.0 * carry[0] + carry[1], carry[0]), None), (a, b), None, length=3)[0]

    x = jnp.zeros((16, 8, 4), jnp.float32)
    hlo = jax.jit(swap).lower(x, x).compile().as_text()
    assert trace_copies(Program(hlo, 0, 0, frozenset({x.size})))


@pytest.mark.parametrize("cell, readout", NETWORKS, ids=NETWORK_IDS)
def test_no_trace_copy_in_loop(cell, readout):
    """Level-0 e-prop updates its traces in place: no trace-sized copy runs inside the scan's loop.

    Measured with each trick switched off: without ``written_after`` (it returning ``None``) LSTM with
    either readout copied its ``(32, 8, 4, 49)`` trace every step (one standalone ``copy`` in the loop
    body); the other networks did not (nor ALIF and GRU at 64 neurons, or at 256 with batch 32: XLA found the
    order itself). With the traces stored batch-major, ``(B, n, k, m)`` (which also drops both tricks), all
    seven networks with per-synapse traces copied one every step: a ``copy``, or a fusion that only
    transposes. LIF under a stateless readout carries no per-synapse trace at all (its trace factorises into
    the presynaptic ``zbar``), so there it only checks that it still does not.
    """
    prog = program("eprop", cell, readout)
    if (cell, readout) == ("lif", "stateless"):
        assert not prog.trace_sizes, f"LIF+stateless should carry only presynaptic traces, got {prog.trace_sizes}"
    else:
        assert prog.trace_sizes, "no per-synapse trace found in the online state"
        written = [inst for inst, _ in loop_fusions(prog.hlo) if prog.trace_sizes.intersection(inst.sizes)]
        assert written, "no fusion inside the loop writes a trace: has the HLO text's format changed?"
    copies = trace_copies(prog)
    assert not copies, f"trace-sized copies inside the loop (sizes {sorted(prog.trace_sizes)}): {copies}"


def uoro_program(cell: str = "lif") -> Program:
    """UORO's compiled whole-sequence program; its "traces" here are the parameter factor's leaves ``theta~``
    of three or more axes, ``(B,) + kernel shape``."""
    prob = problem(cell, readout="stateless", **SIZES)
    key = jax.random.key(0)
    fn = lambda params, inputs, targets: ep.uoro(prob.model, prob.loss)(params, inputs, targets, key=key)
    compiled = jax.jit(fn).lower(prob.params, prob.inputs, prob.targets).compile()
    state = jax.eval_shape(
        lambda params: ep.online.uoro(prob.model, prob.loss).init(params, SIZES["batch"], key=key), prob.params
    )
    theta = jax.tree_util.tree_leaves(state.traces.theta)
    return Program(compiled.as_text(), 0, 0, frozenset(math.prod(leaf.shape) for leaf in theta if leaf.ndim >= 3))


def test_uoro_updates_its_parameter_factor_in_place():
    """The gradient reads the old ``theta~`` before its update overwrites it (``written_after``): without
    that order XLA copied every kernel's ``theta~`` each step (3 copies on LIF(32), batch 8; 7 on a GRU)."""
    prog = uoro_program()
    assert prog.trace_sizes, "no per-example kernel factor found in UORO's state"
    assert not trace_copies(prog), trace_copies(prog)


# The most instructions the largest trace-sized fusion in the loop may hold, per network whose per-synapse
# passes read per-neuron blocks that XLA would otherwise re-evaluate (float32, SIZES). Measured with
# ``formed_once`` / without it (it returning its input): GRU+leaky 20 / 72, GRU+stateless 12 / 73,
# LIF+leaky (the readout filter) 13 / 43, ALIF+leaky 42 / 74. The bounds sit between, with room for
# small changes of XLA's fusion. Left out: the networks whose count the trick does not change at these
# sizes (LSTM+leaky 24, LSTM+stateless 28, with or without; ALIF+stateless 22 with, 18 without).
MAX_OPS_PER_TRACE_ELEMENT = {
    ("gru", "leaky"): 36,
    ("gru", "stateless"): 36,
    ("lif", "leaky"): 26,
    ("alif", "leaky"): 58,
}


@pytest.mark.parametrize(
    "cell, readout", list(MAX_OPS_PER_TRACE_ELEMENT), ids=[f"{c}+{r}" for c, r in MAX_OPS_PER_TRACE_ELEMENT]
)
def test_blocks_formed_once(cell, readout):
    """The fusions that write the traces read the per-neuron blocks instead of re-evaluating the cell's
    derivatives for every trace element (``formed_once``)."""
    ops = ops_per_trace_element(program("eprop", cell, readout))
    bound = MAX_OPS_PER_TRACE_ELEMENT[(cell, readout)]
    assert ops <= bound, f"the largest trace-sized fusion in the loop holds {ops} instructions (at most {bound})"


# The most temporary memory a whole-sequence program may use, as a multiple of its online state (the bytes of
# ``rule.init(params, batch)``: carries, traces, gradient accumulators). The loop-carried state is itself a
# temporary of the program, so the ratio is at least about 1; what is above it is the per-step work. Measured
# (float32, SIZES): level-0 e-prop 1.10 (GRU+leaky) to 1.37 (LSTM+stateless) where per-synapse traces
# dominate the state, 2.23 for LIF+stateless, whose state is only the presynaptic traces and the gradient
# accumulators; eprop_m(1) on LIF+leaky 1.00 (its dense level dominates), deep_eprop(depth="full") on LIF+leaky
# 2.00. The same at T = 48 (nothing grows with T). The bound is 1.5x the worst, rounded up. It is not what
# catches a trace copied every step (that adds one trace, 1.12 -> 1.57 and 1.37 -> 2.21 on LSTM, below the
# bound): test_no_trace_copy_in_loop does; this one catches temporaries that grow with T, or per-step work
# several times the size of the state.
TEMP_PER_STATE = 3.5

MEMORY_CASES = [("eprop", cell, readout) for cell, readout in NETWORKS] + [
    ("eprop_m1", "lif", "leaky"),
    ("deep_eprop_full", "lif", "leaky"),
]


@pytest.mark.parametrize("rule, cell, readout", MEMORY_CASES, ids=[f"{r}-{c}+{o}" for r, c, o in MEMORY_CASES])
def test_temporaries_bounded_by_state(rule, cell, readout):
    """The whole-sequence program's temporaries stay within :data:`TEMP_PER_STATE` times the online state."""
    prog = program(rule, cell, readout)
    ratio = prog.temp_bytes / prog.state_bytes
    assert ratio <= TEMP_PER_STATE, (
        f"temporaries {prog.temp_bytes} B = {ratio:.2f} x the online state ({prog.state_bytes} B), "
        f"above {TEMP_PER_STATE}"
    )


# ----------------------------------------------------------------------------------------------------------
# The guards bite: with a trick switched off (its function in eproptax._tricks patched), its test fails
# ----------------------------------------------------------------------------------------------------------


def test_without_written_after_lstm_copies_its_trace(monkeypatch):
    monkeypatch.setattr(eproptax._tricks, "written_after", lambda *trees: None)
    assert trace_copies(compile_program("eprop", "lstm", "leaky"))


def test_without_written_after_uoro_copies_its_parameter_factor(monkeypatch):
    monkeypatch.setattr(eproptax._tricks, "written_after", lambda *trees: 0.0)
    assert trace_copies(uoro_program())


def test_without_formed_once_the_blocks_are_evaluated_per_trace_element(monkeypatch):
    monkeypatch.setattr(eproptax._tricks, "formed_once", lambda tree: tree)
    ops = ops_per_trace_element(compile_program("eprop", "gru", "stateless"))
    assert ops > MAX_OPS_PER_TRACE_ELEMENT[("gru", "stateless")]
