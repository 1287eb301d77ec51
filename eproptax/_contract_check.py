"""The cell contract, checked: what each rule relies on, tested once when the rule is built.

Three levels, each including the one before; a rule checks only what it relies on:

``"apply"`` (every rule, ``bptt`` included)
    shapes only (``jax.eval_shape``): ``init_carry`` and ``apply`` agree on the carry's structure, shapes and
    dtypes, and ``apply`` returns ``n_out`` outputs.
``"synapse"`` (``rtrl``)
    and, for each neuron layer, ``synapse`` returns ``(n, k)`` and is affine in ``(x, z_prev)``, as the
    effective weights ``a = W_eff @ [x, z_prev, 1]`` assume (probed at random points).
``"neuron"`` (the e-prop family, ``snap``)
    and ``dynamics`` keeps the carry and is neuron-wise in ``h_prev`` and ``a``, ``output`` is neuron-wise
    and returns ``(n,)``, and a declared ``leak`` matches autodiff of ``dynamics``.

The probes run in the parameters' dtype, at random parameters and inputs drawn with NumPy, as one small
program per check compiled with XLA's quick settings on the CPU (a program run once gains nothing from a slow
compile); the arithmetic around it is NumPy. Neuron-wise is tested at :data:`STATES` states with ``2
ceil(log2 n)`` jvps whose tangents live on the neurons with bit ``b`` of their index set (or clear): any two
neurons differ in a bit, so every edge between two neurons that is nonzero at a probe state shows up. Where a
value is traced (a cell built inside ``jax.vmap`` over a time constant) the probes are skipped and only the
shape checks run. A cell that passed is remembered (by the identity of its functions), so a second rule built
for it checks nothing again.
"""

from __future__ import annotations

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._cell import Cell, float_state, is_neuron, layers_of, variable_leaks, with_float_state

LEVELS = ("apply", "synapse", "neuron")
_QUICK = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}  # a program run once
LAM = 0.3  # the affinity probe's mix of two inputs
STATES = 8  # the probe states: half random, half reached by `dynamics` from zero
PROBE_STEPS = 3  # the steps of `dynamics` before each probe
_PASSED: dict = {}  # the cells that passed, by the identity of their fields: {key: (cell, level)}
_MEASURED: dict = {}  # the probes' measurements, by their program's text and constants
_REMEMBERED = 256  # cells (each kept alive, so that no other object takes its fields' ids) and measurements


class ContractError(ValueError):
    """A cell breaks the cell contract; the message names the layer, the part of the contract and the fix."""


def check(cell: Cell, *, level: str = "neuron") -> None:
    """Checks ``cell`` against the cell contract (:mod:`eproptax.cells`), as the rules do when they are built.

    Every layer is checked: its shapes, and, for a neuron layer (one with ``synapse`` / ``dynamics`` /
    ``output``), that ``synapse`` is affine in its inputs, that ``dynamics`` and ``output`` are neuron-wise
    and that a declared ``leak`` is what autodiff of ``dynamics`` gives. It costs one small compiled program
    (0.1 s for a cell rebuilt, 0.6 to 1.0 s for a 256-neuron LIF network of new sizes on a 2-core CPU;
    ``benchmarks/contract_cost.py``), and a
    failure names the layer and the part of the contract (docs/errors.md lists them, with their fixes).

    Args:
      cell: a :class:`~eproptax.Cell` or a stack.
      level: ``"neuron"`` (everything, what the e-prop family relies on), ``"synapse"`` (what ``rtrl``
        relies on) or ``"apply"`` (shapes only, what ``bptt`` relies on).

    Raises:
      ContractError: (a ``ValueError``) naming the layer, the broken part and how to fix it.
    """
    check_cell("cells.check", cell, level)


def check_cell(where: str, cell: Cell, level: str) -> None:
    """Runs the checks of ``level`` (one of :data:`LEVELS`) on every layer of ``cell``; messages start ``where``."""
    if level not in LEVELS:
        raise ValueError(f"{where}: `level` must be one of {LEVELS}, got {level!r}.")
    if not isinstance(cell, Cell):
        what = "cell" if where == "cells.check" else "model"
        raise TypeError(f"{where}: `{what}` must be an ep.cells.Cell, got {type(cell).__name__}.")
    key = tuple(id(field) for field in cell)
    if key in _PASSED and LEVELS.index(_PASSED[key][1]) >= LEVELS.index(level):
        return  # the same functions passed these checks already (a cell is built once, its rules many times)
    layers = layers_of(cell)
    params = _init(where, cell)
    params = params if cell.layers else (params,)
    names = [f"{where}: layer {i}" if cell.layers else f"{where}: the cell" for i in range(len(layers))]
    for name, layer, p in zip(names, layers, params):
        _shapes(name, layer, p, level)
    probed = [i for i, layer in enumerate(layers) if level != "apply" and is_neuron(layer)]
    if probed and not _probe(names, layers, params, probed, level):
        return  # a hyperparameter is traced: the shape checks are all there is (and nothing is remembered)
    _remember(_PASSED, key, (cell, level))


def _remember(memory: dict, key, value):
    """``memory[key] = value``, forgetting the oldest entry beyond :data:`_REMEMBERED`; returns ``value``."""
    if len(memory) >= _REMEMBERED:
        memory.pop(next(iter(memory)))
    memory[key] = value
    return value


def _probe(names, layers, params, probed: list, level: str) -> bool:
    """Measures the layers ``probed`` in one small program, on the CPU, now (even where the rule is built inside
    a jit), and judges them; ``False`` where the program reads a traced value (nothing could be judged)."""
    rng = np.random.default_rng(0)
    inputs = [_probe_inputs(layers[i], params[i], level, rng) for i in probed]
    measure = lambda args: [_measure(layers[i], *a) for i, a in zip(probed, args)]
    args = [x[:4] for x in inputs]
    with jax.ensure_compile_time_eval(), jax.default_device(_host()):
        traced = jax.jit(measure).trace(args)
        if len(traced.jaxpr.in_avals) != len(jax.tree_util.tree_leaves(args)):
            return False  # an input beyond its arguments: a traced hyperparameter it closes over
        # the same program (equations and constants) on the same arguments measures the same: a cell rebuilt by
        # its factory with the same hyperparameters is not compiled again
        digest = hashlib.sha256()
        for leaf in [*traced.jaxpr.consts, *jax.tree_util.tree_leaves(args)]:
            digest.update(np.asarray(leaf).tobytes())
        key = (str(traced.jaxpr), digest.hexdigest())
        measured = _MEASURED.get(key) or _remember(_MEASURED, key, traced.lower().compile(_QUICK)(args))
        host = lambda x: np.asarray(x, np.float64) if jnp.issubdtype(x.dtype, jnp.inexact) else np.asarray(x)
        for i, x, m in zip(probed, inputs, measured):  # in float64, with the tolerances of the probe's dtype
            _judge(names[i], layers[i], _probe_dtype(params[i]), x, *jax.tree_util.tree_map(host, m))
    return True


def _host():
    """The CPU, where a probe compiles fastest; the default device where JAX runs without its CPU backend."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return jax.devices()[0]


def _init(where: str, cell: Cell):
    params = jax.eval_shape(cell.init, jax.random.key(0))
    floats = {jnp.result_type(x) for x in jax.tree_util.tree_leaves(params) if jnp.issubdtype(x.dtype, jnp.inexact)}
    if len(floats) > 1:
        raise ContractError(
            f"{where}: `init` returns parameters of several floating dtypes {sorted(map(str, floats))}; give "
            "every parameter one dtype (the rules compute in it)."
        )
    return params


def _float_dtype(params):
    leaves = [x for x in jax.tree_util.tree_leaves(params) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return leaves[0].dtype if leaves else jnp.float32


def _same_carry(name: str, what: str, before, after) -> None:
    """``after`` has ``before``'s tree structure and each leaf its shape and dtype (what ``lax.scan`` needs)."""
    b_def, a_def = jax.tree_util.tree_structure(before), jax.tree_util.tree_structure(after)
    if b_def != a_def:
        raise ContractError(
            f"{name}: `{what}` must return a carry with the structure of `init_carry`'s, {b_def}; got {a_def}."
        )
    for path, b, a in zip(
        jax.tree_util.tree_flatten_with_path(before)[0],
        jax.tree_util.tree_leaves(before),
        jax.tree_util.tree_leaves(after),
    ):
        if (tuple(b.shape), b.dtype) != (tuple(a.shape), a.dtype):
            raise ContractError(
                f"{name}: `{what}` changes carry leaf {jax.tree_util.keystr(path[0]) or '(root)'} from "
                f"{b.dtype}{list(b.shape)} to {a.dtype}{list(a.shape)}; return each leaf in its shape and dtype "
                "(e.g. `.astype(h_prev.dtype)`)."
            )


def _call(name: str, what: str, fn, *args):
    """``jax.eval_shape(fn, *args)``, with a failure inside the user's function reported as a contract error."""
    try:
        return jax.eval_shape(fn, *args)
    except Exception as e:  # the user's function failed on the shapes the rules give it
        raise ContractError(
            f"{name}: `{what}` fails on the shapes the rules give it ({_shapes_of(args)}): {type(e).__name__}: "
            f"{str(e).splitlines()[0]}"
        ) from e


def _shapes_of(args) -> str:
    return ", ".join(
        str(jax.tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape)}", arg))
        if jax.tree_util.tree_leaves(arg)
        else "()"
        for arg in args
    )


def _shapes(name: str, layer: Cell, params, level: str) -> None:
    """The shape checks (``jax.eval_shape``; nothing is run): a neuron layer's parts first (unless ``level`` is
    ``"apply"``: ``bptt`` reads ``apply`` only), then ``apply``."""
    dtype = _float_dtype(params)
    x = jax.ShapeDtypeStruct((layer.n_in,), dtype)
    carry = _call(name, "init_carry", layer.init_carry, params)
    if is_neuron(layer) and level != "apply":
        _neuron_shapes(name, layer, params, carry, x)
    if is_neuron(layer) and level == "neuron":
        for path, leaf in jax.tree_util.tree_flatten_with_path(carry)[0]:
            if jnp.issubdtype(leaf.dtype, jnp.inexact) and leaf.ndim != 1:
                raise ContractError(
                    f"{name}: `init_carry` leaf {jax.tree_util.keystr(path) or '(root)'} has shape {leaf.shape}; the "
                    "e-prop family reads each floating state variable as one value per neuron, shape (n,): split it "
                    "into one leaf per variable."
                )
    new_carry, out = _call(name, "apply", layer.apply, params, carry, x)
    _same_carry(name, "apply", carry, new_carry)
    if layer.n_out is not None and tuple(out.shape) != (layer.n_out,):
        raise ContractError(f"{name}: `apply` must return outputs of shape (n_out={layer.n_out},), got {out.shape}.")


def _neuron_shapes(name: str, layer: Cell, params, carry, x) -> None:
    """``synapse`` returns ``(n, k)``, ``output`` ``(n,)``, ``dynamics`` keeps the carry, ``leak`` is well formed."""
    _neuron_carry(name, layer, carry)
    n = layer.n_out
    a = _call(name, "synapse", layer.synapse, params, x, jax.ShapeDtypeStruct((n,), x.dtype))
    if a.ndim != 2 or a.shape[0] != n:
        raise ContractError(
            f"{name}: `synapse` must return shape (n={n}, k), one row of k synaptic entries per neuron, got "
            f"{a.shape}; add the entry axis with `[:, None]`."
        )
    z = _call(name, "output", layer.output, carry)
    if tuple(z.shape) != (n,):
        raise ContractError(f"{name}: `output` must return shape (n={n},), got {z.shape}.")
    _same_carry(name, "dynamics", carry, _call(name, "dynamics", layer.dynamics, carry, a))
    s = sum(jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in jax.tree_util.tree_leaves(carry))
    try:
        variable_leaks(layer, s, a.shape[1])
    except ValueError as e:
        raise ContractError(f"{name}: {e}") from None
    if layer.synapses is not None:
        _synapse_table(name, layer, params, a.shape[1])


def _synapse_table(name: str, layer: Cell, params, k: int) -> None:
    """A cell storing its weights per synapse: ``synapses = (pre, weights)``, ``pre`` integer ``(n, K)`` and
    ``weights(params)`` ``(n, k, K)``."""
    try:
        pre, weights = layer.synapses
    except (TypeError, ValueError):
        raise ContractError(f"{name}: `synapses` must be a pair (pre, weights), got {layer.synapses!r}.") from None
    n = layer.n_out
    if not jnp.issubdtype(jnp.result_type(pre), jnp.integer) or jnp.ndim(pre) != 2 or jnp.shape(pre)[0] != n:
        raise ContractError(
            f"{name}: `synapses` pre must be an integer (n={n}, K) index table into [x, z_prev, 1], got "
            f"{jnp.result_type(pre)} of shape {jnp.shape(pre)}."
        )
    w = _call(name, "synapses weights", weights, params)
    if tuple(w.shape) != (n, k, jnp.shape(pre)[1]):
        raise ContractError(
            f"{name}: `synapses` weights(params) must return (n={n}, k={k}, K={jnp.shape(pre)[1]}), the weights "
            f"in the order of pre, got {w.shape}."
        )


def _neuron_carry(name: str, layer: Cell, carry) -> None:
    """A neuron cell's state: every leaf led by the ``n_out`` neurons, at least one of them floating."""
    n = layer.n_out
    for path, leaf in jax.tree_util.tree_flatten_with_path(carry)[0]:
        if leaf.ndim < 1 or leaf.shape[0] != n:
            raise ContractError(
                f"{name}: `init_carry` leaf {jax.tree_util.keystr(path) or '(root)'} has shape {leaf.shape}; "
                f"every leaf of a neuron cell's state must have a leading axis of n_out={n} (one entry per neuron)."
            )
    if not any(jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in jax.tree_util.tree_leaves(carry)):
        raise ContractError(f"{name}: `init_carry` of a neuron cell must have at least one floating state variable.")


def _probe_dtype(params):
    """The dtype the probes run in: the parameters', at least float32 (a bfloat16 cell is probed in float32, where
    rounding does not hide a small nonlinearity)."""
    dtype = jnp.dtype(_float_dtype(params))
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def _tolerance(dtype) -> float:
    """Relative tolerance of a probe: the square root of the dtype's epsilon (3e-4 in float32, 1.5e-8 in
    float64)."""
    return float(np.sqrt(jnp.finfo(dtype).eps))


def _random(shapes, rng, dtype, *, spread: bool = False):
    """Random values of the shapes of ``shapes``: floats standard normal in ``dtype`` (times a log-uniform
    magnitude from 1e-3 to 10 per entry with ``spread``, so that some land near any threshold), ints zero."""

    def draw(s):
        if not jnp.issubdtype(s.dtype, jnp.inexact):
            return np.zeros(s.shape, s.dtype)
        scale = 10 ** rng.uniform(-3, 1, s.shape) if spread else 1.0
        return (rng.standard_normal(s.shape) * scale).astype(dtype)

    return jax.tree_util.tree_map(draw, shapes)


def _judge(name: str, layer: Cell, dtype, inputs, ys, h, pushed) -> None:
    """Raises :class:`ContractError` for the first measurement beyond the dtype's tolerance: ``synapse`` affine,
    then at each probe state ``dynamics`` and ``output`` neuron-wise and the declared ``leak`` exact."""
    probe = inputs[4]
    ok = np.all(np.isfinite(ys), 0)  # an entry that is not finite at a probe point is not measured
    diff = np.abs(ys[2] - LAM * ys[0] - (1 - LAM) * ys[1])[ok]
    err = np.max(diff, initial=0.0) / max(np.max(np.abs(ys[:2][:, ok]), initial=0.0), 1e-300)
    if err > _tolerance(dtype):
        raise ContractError(
            f"{name}: `synapse` is not affine in (x, z_prev): at random inputs it is {err:.3g} (relative) away from "
            "the affine map the rules read it as, a = W_eff @ [x, z_prev, 1]. Keep `synapse` to weighted sums of x "
            "and z_prev and move nonlinear functions (tanh, products) into `dynamics`."
        )
    for r in range(STATES if probe is not None else 0):
        at = lambda tree, r=r: jax.tree_util.tree_map(lambda x: x[r], tree)
        _judge_probe(name, layer, dtype, at(h), probe[2][r], probe[5], at(pushed))


def _probe_inputs(layer: Cell, params, level: str, rng) -> tuple:
    """``(values, us, zs, probe, probe and masks)``: random parameters of the shapes of ``params``, the rows of
    inputs of the affinity probe (two random ones and their mix by :data:`LAM`) and, at level ``"neuron"``,
    ``probe = (h, steps, a, t_h, t_a, masks)``: :data:`STATES` start states (half with magnitudes from 1e-3 to
    10, half zero), the inputs ``steps`` that ``dynamics`` runs them over (standard normal times 1e-2 to 10 per
    state), the inputs ``a`` at the probe and the tangents (:func:`_tangents`)."""
    dtype = _probe_dtype(params)
    u = rng.standard_normal((2, layer.n_in)).astype(dtype)
    z = rng.uniform(size=(2, layer.n_out)).astype(dtype)
    us, zs = np.vstack([u, LAM * u[0] + (1 - LAM) * u[1]]), np.vstack([z, LAM * z[0] + (1 - LAM) * z[1]])
    values = _random(params, rng, dtype)
    if level != "neuron":
        return values, us, zs, None, None
    carry = jax.eval_shape(layer.init_carry, values)
    a = jax.eval_shape(layer.synapse, values, u[0], z[0])
    batched = lambda tree, *lead: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype), tree)
    half = np.arange(STATES) < STATES // 2
    h = jax.tree_util.tree_map(
        lambda x: x * half.reshape((-1,) + (1,) * (x.ndim - 1)),
        _random(batched(carry, STATES), rng, dtype, spread=True),
    )
    scale = 10 ** rng.uniform(-2, 1, (1, STATES, 1, 1))
    steps = (_random(batched(a, PROBE_STEPS, STATES), rng, dtype) * scale).astype(dtype)
    probe = (h, steps, _random(batched(a, STATES), rng, dtype), *_tangents(layer, carry, a, rng))
    return values, us, zs, probe[:5], probe


def _measure(layer: Cell, params, us, zs, probe):
    """In one compiled program: ``synapse`` at the rows of ``(us, zs)``; with a ``probe`` ``(h, steps, a, t_h,
    t_a)``, for each of its states the state that ``dynamics`` reaches from ``h`` over ``steps``, and there
    ``dynamics`` pushed forward along each tangent of ``t_h`` (state, as its float columns ``(n, s)``) and ``t_a``
    (input), ``output`` along ``t_h``."""
    ys = jax.vmap(layer.synapse, in_axes=(None, 0, 0))(params, us, zs)
    if probe is None:
        return ys, None, None
    h, steps, a, t_h, t_a = probe
    push = lambda fn, x, ts: jax.vmap(lambda t: jax.jvp(fn, (x,), (t,))[1])(ts)

    def one(h, steps, a):
        for a_t in steps:  # the cell's own dynamics bring its state to its own scale (a LIF near its threshold)
            h = layer.dynamics(h, a_t)
        hf = float_state(h)
        dyn_h = lambda v: float_state(layer.dynamics(with_float_state(h, v), a))
        dyn_a = lambda b: float_state(layer.dynamics(h, b))
        out_h = lambda v: layer.output(with_float_state(h, v))
        return h, (push(dyn_h, hf, t_h), push(dyn_a, a, t_a), push(out_h, hf, t_h))

    return (ys, *jax.vmap(one, in_axes=(0, 1, 0))(h, steps, a))


def _bit_masks(n: int) -> np.ndarray:
    """``(2 ceil(log2 n), n)``: row ``2b`` marks the neurons with bit ``b`` of their index set, row ``2b + 1``
    those with it clear; any two neurons are apart in some row (none for one neuron)."""
    idx = np.arange(n)
    bits = math.ceil(math.log2(n)) if n > 1 else 0
    return np.array([((idx >> b) & 1) == v for b in range(bits) for v in (1, 0)], bool).reshape(-1, n)


def _tangents(layer: Cell, carry, a, rng) -> tuple:
    """``(t_h, t_a, masks)`` for a state shaped like ``carry`` and an input like ``a``: random tangents on the
    neurons of each bit mask, then for each leaky variable ``c`` a tangent on ``c`` alone and a random one on the
    other variables (random, so that their effects cannot cancel) (``t_h``), and ones on ``a`` (``t_a``)."""
    floats = [x for x in jax.tree_util.tree_leaves(carry) if jnp.issubdtype(x.dtype, jnp.inexact)]
    (n, s), k, dtype = (a.shape[0], len(floats)), a.shape[1], floats[0].dtype
    masks = _bit_masks(n)
    leaky = [c for c, leak in enumerate(variable_leaks(layer, s, k)) if leak is not None]  # checked with the shapes
    own = [np.zeros((1, n, s)) + (np.arange(s) == c) for c in leaky]  # d h_c / d h_c_prev
    other = [rng.standard_normal((1, n, s)) * (np.arange(s) != c) for c in leaky]  # d h_c / d the others
    t_h = np.concatenate([masks[:, :, None] * rng.standard_normal((len(masks), n, s)), *own, *other])
    t_a = np.concatenate([masks[:, :, None] * rng.standard_normal((len(masks), n, k)), np.ones((1, n, k))])
    return t_h.astype(dtype), t_a.astype(dtype), masks


def _judge_probe(name: str, layer: Cell, dtype, h, a, masks, pushed) -> None:
    """At one state ``h`` and input ``a``: ``dynamics`` and ``output`` neuron-wise, and the declared leaks."""
    d_h, d_a, d_out = pushed
    m, (n, s) = len(masks), d_h.shape[1:]
    for fn_name, wrt, moved in (
        ("dynamics", "h_prev", d_h[:m]),
        ("dynamics", "a", d_a[:m]),
        ("output", "h", d_out[:m]),
    ):
        _neuronwise(name, layer, dtype, fn_name, wrt, moved, masks, h, a)
    leaks = variable_leaks(layer, s, a.shape[1])
    leaky = [c for c, leak in enumerate(leaks) if leak is not None]
    for i, c in enumerate(leaky):
        decay, gain = (np.broadcast_to(np.asarray(e, np.float64), (n,)) for e in leaks[c])
        got = (d_h[m + i][:, c], d_a[m][:, c], d_h[m + len(leaky) + i][:, c])  # own, input, others
        off = np.max([np.abs(got[0] - decay), np.abs(got[1] - gain), np.abs(got[2])], 0) / (1 + abs(decay) + abs(gain))
        off = np.where(np.isfinite(off), off, 0.0)  # not finite at this state: not measured
        j = int(np.argmax(off))
        if off[j] > _tolerance(dtype):
            names = [
                jax.tree_util.keystr(p)
                for p, v in jax.tree_util.tree_flatten_with_path(h)[0]
                if np.issubdtype(v.dtype, np.floating)
            ]
            raise ContractError(
                f"{name}: `leak` declares state variable {c} ({names[c]}) a leaky integrator with decay "
                f"{decay[j]:.6g} and gain {gain[j]:.6g}, but autodiff of `dynamics` gives d h/d h_prev = "
                f"{got[0][j]:.6g}, d h/d a = {got[1][j]:.6g} and {got[2][j]:.3g} through the other state variables "
                f"(neuron {j}). Make `leak` match `dynamics`, or leave it out (leak=None: full traces, slower, "
                "never wrong)."
            )


def _neuronwise(name: str, layer: Cell, dtype, fn_name: str, wrt: str, moved, masks, h, a) -> None:
    """``moved[p]``, the push-forward of a tangent on the neurons ``masks[p]``, is zero off those neurons."""
    if not len(masks):  # one neuron: nothing to mix
        return
    moved = np.where(np.isfinite(moved), moved, 0.0)  # not finite at this state: not measured
    size = np.abs(moved).reshape(moved.shape[:2] + (-1,)).max(-1)  # (probes, n)
    stray = np.max(size * ~masks, 0)
    scale = np.max(size)
    if scale == 0 or np.max(stray) <= 10 * float(jnp.finfo(dtype).eps) * scale:
        return
    j = int(np.argmax(stray))
    i, weight = _strongest_input(layer, fn_name, wrt, h, a, j)
    raise ContractError(
        f"{name}: `{fn_name}` is not neuron-wise: the output of neuron {j} depends on `{wrt}` of neuron {i} "
        f"(derivative {weight:.3g}). The rules take its Jacobians to be block-diagonal over neurons; compute neuron "
        f"j's {'new state' if fn_name == 'dynamics' else 'output'} from neuron j's own entries only, and put "
        "connections between neurons in `synapse` (as weights)."
    )


def _strongest_input(layer: Cell, fn_name: str, wrt: str, h, a, j: int) -> tuple[int, float]:
    """The neuron ``i != j`` whose ``wrt`` moves neuron ``j``'s output most, and by how much (one vjp)."""
    if wrt == "a":
        fn, x = (lambda b: float_state(layer.dynamics(h, b))), jnp.asarray(a)
    elif fn_name == "dynamics":
        fn, x = (lambda v: float_state(layer.dynamics(with_float_state(h, v), a))), float_state(h)
    else:
        fn, x = (lambda v: layer.output(with_float_state(h, v))), float_state(h)
    out, pull = jax.vjp(fn, x)
    row = np.abs(np.asarray(pull(jnp.zeros_like(out).at[j].set(1))[0])).reshape(x.shape[0], -1).max(-1)
    row[j] = 0
    return int(np.argmax(row)), float(np.max(row))
