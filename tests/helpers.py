"""Shared test helpers: tree comparisons, tiny problems, and a cache of jitted rules.

JAX compile time dominates the suite on a small machine, so every test that can reuses one compiled
function: :func:`rule_fn` keys a module-level cache by (rule, problem configuration, variant), and problems
of one configuration always have the same shapes (same sizes, batch and length), so a rule compiles once
per configuration for the whole session, whatever the parameter values.
"""

from __future__ import annotations

import collections
import functools
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import eproptax as ep

# ----------------------------------------------------------------------------------------------------------
# Tree comparisons
# ----------------------------------------------------------------------------------------------------------


def flat(tree) -> np.ndarray:
    """All leaves of ``tree`` as one float64 NumPy vector."""
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves]) if leaves else np.zeros(0)


def rel_err(a, b) -> float:
    """``||a - b|| / ||b||`` over whole trees (``||a - b||`` when ``b`` is zero)."""
    x, y = flat(a), flat(b)
    scale = np.linalg.norm(y)
    return float(np.linalg.norm(x - y) / (scale if scale > 0 else 1.0))


def cosine(a, b) -> float:
    """Cosine similarity of two trees seen as vectors."""
    x, y = flat(a), flat(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def assert_close(a, b, tol: float, what: str = "") -> None:
    """Asserts the same tree structure and ``rel_err(a, b) <= tol``, leaf by leaf and overall."""
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    assert sa == sb, f"{what}: tree structures differ: {sa} vs {sb}"
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        assert np.shape(x) == np.shape(y), f"{what}{jax.tree_util.keystr(path)}: shapes {np.shape(x)} vs {np.shape(y)}"
        err = rel_err(x, y)
        assert err <= tol, f"{what}{jax.tree_util.keystr(path)}: relative error {err:.3e} > {tol:.1e}"


# ----------------------------------------------------------------------------------------------------------
# Tiny problems
# ----------------------------------------------------------------------------------------------------------


def mse(out, target):
    """Masked squared error of one example and one step; ``target = {"y": (n_out,), "mask": ()}``."""
    return 0.5 * target["mask"] * jnp.sum((out - target["y"]) ** 2)


SPIKING = ("lif", "alif")
CLASSIC = ("rnn", "lstm", "gru")
CELLS = SPIKING + CLASSIC
READOUTS = ("leaky", "linear")

# ALIF with NEST's beta = 1.7 silences a neuron after one spike at threshold 0.03; a small beta and a short
# adaptation time constant make the adaptation variable matter within a dozen steps.
ALIF_DEFAULTS = dict(beta=0.05, tau_adapt=10.0)


class Config(NamedTuple):
    """A hashable problem configuration: layers, readout, sizes, dtype, options.

    ``cells`` and ``sizes`` have one entry per recurrent layer. ``options`` is a tuple of ``(name, value)``
    keyword arguments given to every recurrent layer's factory. ``generic`` builds each recurrent layer
    without its declared ``leak`` (``cell._replace(leak=None)``: same dynamics, the generic e-prop path).
    """

    cells: tuple = ("lif",)
    readout: str = "leaky"
    n_in: int = 3
    sizes: tuple = (4,)
    n_out: int = 2
    time: int = 8
    batch: int = 2
    dtype: str = "float64"
    options: tuple = ()
    generic: bool = False
    seed: int = 0

    @property
    def id(self) -> str:
        name = "+".join(self.cells) + "+" + self.readout
        if self.generic:
            name += "(generic)"
        return name


def make_layer(name: str, n_in: int, n: int, dtype, **options):
    """One recurrent layer by name (``lif``, ``alif``, ``rnn``, ``lstm``, ``gru``)."""
    if name == "lif":
        return ep.cells.lif(n_in, n, dtype=dtype, **options)
    if name == "alif":
        return ep.cells.alif(n_in, n, dtype=dtype, **{**ALIF_DEFAULTS, **options})
    return {"rnn": ep.cells.rnn, "lstm": ep.cells.lstm, "gru": ep.cells.gru}[name](n_in, n, dtype=dtype, **options)


def make_readout(name: str, n_in: int, n_out: int, dtype):
    if name == "leaky":
        return ep.cells.leaky_readout(n_in, n_out, dtype=dtype)
    return ep.cells.readout(n_in, n_out, dtype=dtype)


@functools.cache
def model_of(cfg: Config):
    """The model of a configuration: ``stack(layers..., readout)``."""
    dtype = jnp.dtype(cfg.dtype)
    layers, n_in = [], cfg.n_in
    for name, n in zip(cfg.cells, cfg.sizes):
        layer = make_layer(name, n_in, n, dtype, **dict(cfg.options))
        layers.append(layer._replace(leak=None) if cfg.generic else layer)
        n_in = n
    return ep.cells.stack(*layers, make_readout(cfg.readout, n_in, cfg.n_out, dtype))


def _init_params(cfg: Config, rng: np.random.Generator):
    """Parameters drawn with NumPy (no eager JAX op to compile for each new shape).

    Weights ``N(0, 1 / fan_in)`` in the layouts of ``model.init`` (flax kernels ``(fan_in, n)``, ``w_*``
    post x pre), biases ``N(0, 0.1^2)``; spiking layers get a positive mean input drive (layers above the
    first see sparse spikes, so a stronger one) and weaker recurrent weights, so that they fire often but not
    every step; the diagonal of ``w_rec`` is zero (no autapses, as ``init`` draws it).
    """
    model = model_of(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    dtype = np.dtype(cfg.dtype)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "bias" in name or "b_out" in name:
            return 0.1 * rng.standard_normal(leaf.shape)
        fan_in = leaf.shape[0] if "kernel" in name else leaf.shape[1]
        return rng.standard_normal(leaf.shape) / np.sqrt(fan_in)

    params = list(jax.tree_util.tree_map_with_path(draw, shapes))
    for i, name in enumerate(cfg.cells):
        if name in SPIKING:
            w_in, w_rec = params[i]["w_in"], params[i]["w_rec"]
            offset = (0.3 if i == 0 else 0.8) / np.sqrt(w_in.shape[1])
            params[i] = {"w_in": 0.3 * w_in + offset, "w_rec": 0.3 * w_rec * (1.0 - np.eye(w_rec.shape[0]))}
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, dtype)), tuple(params))


class Problem(NamedTuple):
    model: Any
    params: Any
    inputs: Any
    targets: Any


@functools.cache
def problem(cfg: Config) -> Problem:
    """Parameters, inputs (0/1 spikes for a spiking first layer, Gaussian otherwise) and masked targets."""
    dtype = np.dtype(cfg.dtype)
    rng = np.random.default_rng(cfg.seed)
    params = _init_params(cfg, rng)
    shape = (cfg.batch, cfg.time, cfg.n_in)
    if cfg.cells[0] in SPIKING:
        inputs = (rng.uniform(size=shape) < 0.5).astype(dtype)
    else:
        inputs = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal((cfg.batch, cfg.time, cfg.n_out)).astype(dtype)
    mask = (rng.uniform(size=(cfg.batch, cfg.time)) < 0.7).astype(dtype)
    mask[:, -1] = 1.0  # at least one step counts in every example
    if cfg.time > 1:
        mask[:, 0] = 0.0  # and at least one is masked out
    return Problem(model_of(cfg), params, jnp.asarray(inputs), {"y": jnp.asarray(y), "mask": jnp.asarray(mask)})


def _zeros_like(a):
    return jnp.asarray(np.zeros(a.shape, a.dtype))


def zero_recurrent(params, cfg: Config):
    """Zeroes every within-layer recurrent weight (``w_rec``; flax's ``h*`` kernels), keeping biases."""
    out = list(params)
    for i, name in enumerate(cfg.cells):
        if name in SPIKING:
            out[i] = {**params[i], "w_rec": _zeros_like(params[i]["w_rec"])}
        else:
            out[i] = {
                k: ({**v, "kernel": _zeros_like(v["kernel"])} if k.startswith("h") else v) for k, v in params[i].items()
            }
    return tuple(out)


def recurrent_traces(model, params, inputs):
    """Per-step outputs of every recurrent layer (all but the top), a tuple of ``(B, T, n_l)`` arrays."""
    layers = model.layers

    def one(x_seq):
        def body(carry, x):
            carry, _ = model.apply(params, carry, x)
            return carry, tuple(layer.output(c) for layer, c in zip(layers[:-1], carry[:-1]))

        return jax.lax.scan(body, model.init_carry(params), x_seq)[1]

    return jax.vmap(one)(inputs)


@functools.cache
def _spikes_fn(cfg: Config):
    return jax.jit(lambda params, inputs: recurrent_traces(model_of(cfg), params, inputs))


def layer_outputs(cfg: Config, params, inputs=None) -> list[np.ndarray]:
    """Per-step outputs of each recurrent layer, ``(B, T, n_l)`` arrays (compiled once per configuration)."""
    inputs = problem(cfg).inputs if inputs is None else inputs
    return [np.asarray(z) for z in _spikes_fn(cfg)(params, inputs)]


def spike_counts(cfg: Config, params, inputs=None) -> list[int]:
    """Total spikes of each recurrent layer on the configuration's inputs."""
    return [int(np.sum(z)) for z in layer_outputs(cfg, params, inputs)]


# ----------------------------------------------------------------------------------------------------------
# Rules, jitted once per (rule, configuration, variant)
# ----------------------------------------------------------------------------------------------------------

RULES = {
    "bptt": lambda model, loss, **kw: ep.bptt(model, loss, **kw),
    "rtrl": lambda model, loss, **kw: ep.rtrl(model, loss, **kw),
    "eprop": lambda model, loss, **kw: ep.eprop(model, loss, **kw),
    "eprop_m1": lambda model, loss, **kw: ep.eprop_m(model, loss, 1, **kw),
    "deep_eprop": lambda model, loss, **kw: ep.deep_eprop(model, loss, **kw),
    "tbptt": lambda model, loss, **kw: ep.tbptt(model, loss, window=3, **kw),
}
FEEDBACK_RULES = ("eprop", "eprop_m1", "deep_eprop")

_CACHE: dict = {}


def rule_fn(rule: str, cfg: Config, variant: str = "plain"):
    """The jitted whole-sequence rule for a configuration, compiled once per session.

    Variants (extra arguments come before ``inputs, targets``):
      ``"plain"``: ``fn(params, inputs, targets)``.
      ``"feedback"``: ``fn(params, B, inputs, targets)``, random feedback with ``B`` an argument.
      ``"reg"``: ``fn(params, reg, inputs, targets)``, a :class:`ep.FiringRateReg` as an argument.
    """
    key = (rule, cfg, variant)
    if key not in _CACHE:
        model, make = model_of(cfg), RULES[rule]
        if variant == "plain":
            fn = make(model, mse)
        elif variant == "feedback":
            fn = lambda params, B, inputs, targets: make(model, mse, feedback=B)(params, inputs, targets)
        elif variant == "reg":
            fn = lambda params, reg, inputs, targets: make(model, mse, reg=reg)(params, inputs, targets)
        else:
            raise ValueError(variant)
        _CACHE[key] = jax.jit(fn)
    return _CACHE[key]


def run(rule: str, cfg: Config, params=None, *extra, variant: str = "plain"):
    """Runs a cached rule on the configuration's inputs and targets (``params`` defaults to its own)."""
    prob = problem(cfg)
    params = prob.params if params is None else params
    return rule_fn(rule, cfg, variant)(params, *extra, prob.inputs, prob.targets)


def loss_fn(cfg: Config, reg: bool = False):
    """The jitted objective ``ep.sequence_loss`` of a configuration (``fn(params, [reg,] inputs, targets)``)."""
    key = ("sequence_loss", cfg, reg)
    if key not in _CACHE:
        model = model_of(cfg)
        if reg:
            _CACHE[key] = jax.jit(
                lambda params, r, inputs, targets: ep.sequence_loss(model, mse, reg=r)(params, inputs, targets)
            )
        else:
            _CACHE[key] = jax.jit(ep.sequence_loss(model, mse))
    return _CACHE[key]


# ----------------------------------------------------------------------------------------------------------
# The NEST e-prop fixtures (tests/fixtures/nest_eprop_bsshslm_2020.json)
# ----------------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


@functools.cache
def nest_fixture() -> dict:
    with open(FIXTURES / "nest_eprop_bsshslm_2020.json") as f:
        return json.load(f)


NEST_CASES = ("lif", "lif_norec", "lif_tref_window")


def nest_refractory(case: dict) -> int:
    """NEST's ``t_ref = n dt`` blocks ``n - 1`` steps: ``n_refractory = max(n_ref_steps - 1, 0)``."""
    return max(int(case["derived"]["n_ref_steps"]) - 1, 0)


def nest_model(case: dict, dtype, n_refractory=None):
    """``lif + leaky_readout`` configured as a NEST case (``n_refractory`` may be traced)."""
    cfg, rec, out = case["config"], case["config"]["rec"], case["config"]["out"]
    assert rec["E_L"] == 0.0 and rec["C_m"] == 1.0 and rec["surrogate_gradient_function"] == "piecewise_linear"
    n_refractory = nest_refractory(case) if n_refractory is None else n_refractory
    lif = ep.cells.lif(
        cfg["n_in"],
        cfg["n_rec"],
        tau_mem=rec["tau_m"],
        threshold=rec["V_th"],
        dt=cfg["dt"],
        zeta=1.0 if rec["regular_spike_arrival"] else None,
        n_refractory=n_refractory,
        surrogate="piecewise_linear",
        surrogate_height=rec["surrogate_gradient_height"],
        surrogate_width=rec["surrogate_gradient_width"],
        dtype=dtype,
    )
    readout = ep.cells.leaky_readout(
        cfg["n_rec"],
        cfg["n_out"],
        tau_out=out["tau_m"],
        dt=cfg["dt"],
        zeta_out=1.0 if out["regular_spike_arrival"] else None,
        dtype=dtype,
    )
    return ep.cells.stack(lif, readout)


def nest_problem(name: str, dtype=np.float64):
    """``(case, params, inputs (1, T, n_in), targets)``; the learning window is the mask of the targets."""
    case = nest_fixture()["cases"][name]
    w = case["weights_before"]
    params = (
        {"w_in": jnp.asarray(np.asarray(w["w_in"], dtype)), "w_rec": jnp.asarray(np.asarray(w["w_rec"], dtype))},
        {"w_out": jnp.asarray(np.asarray(w["w_out"], dtype))},
    )
    time, window = case["config"]["T"], case["config"]["learning_window"]
    inputs = np.asarray(case["inputs"]["x"], dtype)[None]
    mask = (np.arange(time) >= time - window).astype(dtype)[None]
    targets = {"y": jnp.asarray(np.asarray(case["inputs"]["y_target"], dtype)[None]), "mask": jnp.asarray(mask)}
    return case, params, jnp.asarray(inputs), targets


def nest_rule_fn(rule: str, dtype=np.float64, variant: str = "plain"):
    """A rule on the NEST model, jitted once for all three cases (``n_refractory`` is an argument).

    ``fn(n_refractory, params, [B,] inputs, targets)``; variant ``"feedback"`` takes ``B``.
    """
    key = ("nest", rule, np.dtype(dtype).name, variant)
    if key not in _CACHE:
        case = nest_fixture()["cases"]["lif"]
        make = RULES[rule]

        if variant == "plain":

            def fn(n_ref, params, inputs, targets):
                return make(nest_model(case, dtype, n_ref), mse)(params, inputs, targets)
        else:

            def fn(n_ref, params, B, inputs, targets):
                return make(nest_model(case, dtype, n_ref), mse, feedback=B)(params, inputs, targets)

        _CACHE[key] = jax.jit(fn)
    return _CACHE[key]


def vmap_matches_loop(grads_for, values, params, inputs, targets):
    """Checks ``jit(vmap(grads_for))`` over a hyperparameter against a loop of ``jit(grads_for)``.

    ``grads_for(value, params, inputs, targets) -> (loss, grads)`` builds the cell and the rule inside, so the
    hyperparameter is traced; the vmapped function must trace once. Returns the jitted batched function
    (to call again with new data of the same shapes), the batched losses and grads, and the last loop
    iteration's grads.
    """
    import chex

    chex.clear_trace_counter()
    batched = jax.jit(jax.vmap(chex.assert_max_traces(grads_for, n=1), in_axes=(0, None, None, None)))
    single = jax.jit(grads_for)
    losses, grads = batched(values, params, inputs, targets)
    for i, value in enumerate(values):
        loss_i, grads_i = single(value, params, inputs, targets)
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-12)
        assert_close(jax.tree_util.tree_map(lambda g: g[i], grads), grads_i, 1e-12, f"vmap slice {value}")
    return batched, losses, grads, grads_i


def opcodes(compiled) -> collections.Counter:
    """A compiled program's instructions, counted by opcode (names and metadata differ between compiles)."""
    return collections.Counter(re.findall(r"^\s*(?:ROOT )?%\S+ = \S+ ([\w-]+)\(", compiled.as_text(), re.M))
