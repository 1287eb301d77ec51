"""Bad hyperparameters (cells, tasks, networks, the regulariser) and bad checkpoint files fail when built or
read, with an error that names the function, the argument (or the file) and the value received."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eproptax as ep
from eproptax import _hyper
from eproptax import tasks as T

C = ep.cells


def case(id, fn, *parts, exc=ValueError):
    """A bad input: ``fn()`` raises ``exc`` whose message holds ``parts`` in this order."""
    return pytest.param(fn, exc, parts, id=id)


def _raises(exc, parts, fn, *args):
    pattern = ".*".join(re.escape(p) for p in parts)
    with pytest.raises(exc, match=re.compile(pattern, re.S)):
        fn(*args)


# ----------------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------------

CELLS = [
    case("lif-n_in-0", lambda: C.lif(0, 4), "lif: ", "`n_in`", "positive int", "got 0"),
    case("lif-n_rec-negative", lambda: C.lif(2, -3), "lif: ", "`n_rec`", "got -3"),
    case("lif-n_rec-float", lambda: C.lif(2, 4.0), "lif: ", "`n_rec`", "got 4.0"),
    case("lif-n_rec-bool", lambda: C.lif(2, True), "lif: ", "`n_rec`", "got True"),
    case("lif-tau_mem-0", lambda: C.lif(2, 4, tau_mem=0.0), "lif: ", "`tau_mem`", "> 0", "got 0.0"),
    case("lif-tau_mem-negative", lambda: C.lif(2, 4, tau_mem=-20.0), "`tau_mem`", "got -20.0"),
    case("lif-tau_mem-nan", lambda: C.lif(2, 4, tau_mem=float("nan")), "`tau_mem`", "finite", "got nan"),
    case("lif-tau_mem-inf", lambda: C.lif(2, 4, tau_mem=float("inf")), "`tau_mem`", "finite", "got inf"),
    case(
        "lif-tau_mem-array",
        lambda: C.lif(2, 2, tau_mem=np.array([20.0, -1.0])),
        "`tau_mem`",
        "got -1.0 at index (1,)",
    ),
    case("lif-tau_mem-string", lambda: C.lif(2, 4, tau_mem="20"), "`tau_mem`", "got '20'"),
    case("lif-threshold-0", lambda: C.lif(2, 4, threshold=0.0), "lif: ", "`threshold`", "got 0.0"),
    case("lif-threshold-negative", lambda: C.lif(2, 4, threshold=-0.03), "`threshold`", "got -0.03"),
    case("lif-dt-0", lambda: C.lif(2, 4, dt=0.0), "lif: ", "`dt`", "got 0.0"),
    case("lif-dt-negative", lambda: C.lif(2, 4, dt=-1.0), "`dt`", "got -1.0"),
    case("lif-n_refractory-negative", lambda: C.lif(2, 4, n_refractory=-1), "`n_refractory`", ">= 0", "got -1"),
    case("lif-n_refractory-float", lambda: C.lif(2, 4, n_refractory=1.5), "`n_refractory`", "got 1.5"),
    case("lif-surrogate_height-0", lambda: C.lif(2, 4, surrogate_height=0.0), "`surrogate_height`", "got 0.0"),
    case("lif-surrogate_width-negative", lambda: C.lif(2, 4, surrogate_width=-0.1), "`surrogate_width`", "got -0.1"),
    case(
        "lif-surrogate-unknown",
        lambda: C.lif(2, 4, surrogate="sigmoid"),
        "lif: ",
        "`surrogate`",
        "'piecewise_linear', 'exponential', 'fast_sigmoid', 'arctan'",
        "got 'sigmoid'",
    ),
    case("lif-zeta-nan", lambda: C.lif(2, 4, zeta=float("nan")), "`zeta`", "got nan"),
    case("lif-dtype-int", lambda: C.lif(2, 4, dtype=jnp.int32), "lif: ", "`dtype`", "floating", "int32"),
    case("lif-autapses-string", lambda: C.lif(2, 4, autapses="no"), "`autapses`", "got 'no'"),
    case("alif-tau_adapt-0", lambda: C.alif(2, 4, tau_adapt=0.0), "alif: ", "`tau_adapt`", "got 0.0"),
    case("alif-tau_mem-negative", lambda: C.alif(2, 4, tau_mem=-5.0), "alif: ", "`tau_mem`", "got -5.0"),
    case("alif-beta-negative", lambda: C.alif(2, 4, beta=-0.1), "alif: ", "`beta`", ">= 0", "got -0.1"),
    case("alif-beta-array", lambda: C.alif(2, 2, beta=np.array([0.1, -0.2])), "`beta`", "-0.2 at index (1,)"),
    case("alif-n_refractory-array", lambda: C.alif(2, 2, n_refractory=np.array([1, -2])), "`n_refractory`", "-2"),
    case("rnn-n_rec-0", lambda: C.rnn(2, 0), "rnn: ", "`n_rec`", "got 0"),
    case("lstm-n_in-negative", lambda: C.lstm(-1, 4), "lstm: ", "`n_in`", "got -1"),
    case("gru-n_rec-float", lambda: C.gru(2, 2.5), "gru: ", "`n_rec`", "got 2.5"),
    case("gru-dtype-int", lambda: C.gru(2, 4, dtype="int8"), "gru: ", "`dtype`", "got 'int8'"),
    case("readout-n_out-0", lambda: C.readout(4, 0), "readout: ", "`n_out`", "got 0"),
    case("readout-bias-string", lambda: C.readout(4, 2, bias="yes"), "readout: ", "`bias`", "got 'yes'"),
    case("leaky_readout-tau_out-0", lambda: C.leaky_readout(4, 2, tau_out=0.0), "leaky_readout: ", "`tau_out`", "0.0"),
    case("leaky_readout-tau_out-negative", lambda: C.leaky_readout(4, 2, tau_out=-30.0), "`tau_out`", "got -30.0"),
    case("leaky_readout-dt-0", lambda: C.leaky_readout(4, 2, dt=0), "leaky_readout: ", "`dt`", "got 0"),
    case("leaky_readout-zeta_out-inf", lambda: C.leaky_readout(4, 2, zeta_out=float("inf")), "`zeta_out`", "inf"),
    case("leaky_readout-n_in-0", lambda: C.leaky_readout(0, 2), "leaky_readout: ", "`n_in`", "got 0"),
    case("spike_fn-unknown", lambda: C.spike_fn("relu"), "spike_fn: ", "`surrogate`", "'arctan'", "got 'relu'"),
]

# ----------------------------------------------------------------------------------------------------------
# Tasks and their networks
# ----------------------------------------------------------------------------------------------------------

EV = "evidence_accumulation: "
TASKS = [
    case("evidence-dt-0", lambda: T.evidence_accumulation(dt=0.0), EV, "`dt`", "> 0", "got 0.0"),
    case("evidence-dt-negative", lambda: T.evidence_accumulation(dt=-1.0), EV, "`dt`", "got -1.0"),
    case("evidence-n_cues-0", lambda: T.evidence_accumulation(n_cues=0), EV, "`n_cues`", "got 0"),
    case("evidence-n_cues-even", lambda: T.evidence_accumulation(n_cues=4), EV, "`n_cues`", "odd", "got 4"),
    case("evidence-n_cues-float", lambda: T.evidence_accumulation(n_cues=3.0), EV, "`n_cues`", "got 3.0"),
    case("evidence-cue_ms-0", lambda: T.evidence_accumulation(cue_ms=0.0), EV, "`cue_ms`", "got 0.0"),
    case("evidence-recall_ms-negative", lambda: T.evidence_accumulation(recall_ms=-10.0), EV, "`recall_ms`", "-10.0"),
    case("evidence-delay_ms-nan", lambda: T.evidence_accumulation(delay_ms=float("nan")), EV, "`delay_ms`", "nan"),
    case("evidence-rate_hz-negative", lambda: T.evidence_accumulation(rate_hz=-1.0), EV, "`rate_hz`", "got -1.0"),
    case("evidence-noise_hz-negative", lambda: T.evidence_accumulation(noise_hz=-5.0), EV, "`noise_hz`", "-5.0"),
    case(
        "evidence-prob_minority-above-1",
        lambda: T.evidence_accumulation(prob_minority=1.5),
        EV,
        "`prob_minority`",
        "[0, 1]",
        "got 1.5",
    ),
    case("evidence-n_population-0", lambda: T.evidence_accumulation(n_population=0), EV, "`n_population`", "got 0"),
    case("evidence-dtype-int", lambda: T.evidence_accumulation(dtype=jnp.int32), EV, "`dtype`", "int32"),
    case("store_recall-n_periods-1", lambda: T.store_recall(n_periods=1), "store_recall: ", "`n_periods`", ">= 2", "1"),
    case("store_recall-period_steps-0", lambda: T.store_recall(period_steps=0), "`period_steps`", "got 0"),
    case("store_recall-rate-above-1", lambda: T.store_recall(rate=1.5), "store_recall: ", "`rate`", "got 1.5"),
    case("store_recall-noise_rate-negative", lambda: T.store_recall(noise_rate=-0.1), "`noise_rate`", "got -0.1"),
    case(
        "pattern-time_steps-0", lambda: T.pattern_generation(time_steps=0), "pattern_generation: ", "`time_steps`", "0"
    ),
    case("pattern-n_in-0", lambda: T.pattern_generation(n_in=0), "pattern_generation: ", "`n_in`", "got 0"),
    case("pattern-n_out-negative", lambda: T.pattern_generation(n_out=-1), "`n_out`", "got -1"),
    case("pattern-rate-negative", lambda: T.pattern_generation(rate=-0.5), "`rate`", "got -0.5"),
    case("pattern-periods-empty", lambda: T.pattern_generation(periods=()), "`periods`", "non-empty", "got ()"),
    case("pattern-periods-negative", lambda: T.pattern_generation(periods=(100.0, -5.0)), "`periods`", "-5.0"),
    case("pattern-seed-float", lambda: T.pattern_generation(seed=1.5), "`seed`", "got 1.5"),
    case("copy-length-0", lambda: T.delayed_copy(length=0), "delayed_copy: ", "`length`", "got 0"),
    case("copy-delay-negative", lambda: T.delayed_copy(delay=-1), "delayed_copy: ", "`delay`", ">= 0", "got -1"),
    case("copy-n_symbols-0", lambda: T.delayed_copy(n_symbols=0), "`n_symbols`", "got 0"),
    case("adding-time_steps-1", lambda: T.adding(time_steps=1), "adding: ", "`time_steps`", ">= 2", "got 1"),
    case("adding-time_steps-0", lambda: T.adding(time_steps=0), "adding: ", "`time_steps`", "got 0"),
    case("digits-split-unknown", lambda: T.digits(split="valid"), "digits: ", "`split`", "'test'", "got 'valid'"),
    case("digits-encoding-unknown", lambda: T.digits(encoding="rate"), "`encoding`", "got 'rate'"),
    case("digits-row_steps-0", lambda: T.digits(row_steps=0), "digits: ", "`row_steps`", "got 0"),
    case("digits-max_rate-above-1", lambda: T.digits(max_rate=2.0), "digits: ", "`max_rate`", "got 2.0"),
]

KEY = jax.random.key(0)
NETWORKS = [
    case("network-n_rec-0", lambda: T.network(KEY, 3, 2, n_rec=0), "network: ", "`n_rec`", "got 0"),
    case("network-layers-0", lambda: T.network(KEY, 3, 2, layers=0), "network: ", "`layers`", "got 0"),
    case("network-n_in-0", lambda: T.network(KEY, 0, 2), "network: ", "`n_in`", "got 0"),
    case(
        "network-cell-unknown",
        lambda: T.network(KEY, 3, 2, cell="transformer"),
        "network: ",
        "`cell`",
        "'lif', 'alif', 'rnn', 'lstm', 'gru'",
        "got 'transformer'",
    ),
    case("network-readout-unknown", lambda: T.network(KEY, 3, 2, readout="softmax"), "`readout`", "'softmax'"),
    case("network-tau_out-0", lambda: T.network(KEY, 3, 2, tau_out=0.0), "network: ", "`tau_out`", "got 0.0"),
    case(
        "network-adaptive_fraction", lambda: T.network(KEY, 3, 2, adaptive_fraction=1.5), "`adaptive_fraction`", "1.5"
    ),
    case("task-network-n_rec-negative", lambda: T.adding().network(KEY, n_rec=-4), "network: ", "`n_rec`", "got -4"),
    case(
        "task-network-cell-option",
        lambda: T.evidence_accumulation(dt=10.0).network(KEY, tau_mem=-1.0),
        "alif: ",
        "`tau_mem`",
        "got -1.0",
    ),
]

REG = [
    case("reg-c_reg-negative", lambda: _hyper.check_reg("eprop", ep.FiringRateReg(-1.0, 0.01)), "eprop: ", "reg.c_reg"),
    case(
        "reg-f_target-nan",
        lambda: _hyper.check_reg("eprop", ep.FiringRateReg(1.0, float("nan"))),
        "`reg.f_target`",
        "got nan",
    ),
    case("reg-not-a-reg", lambda: _hyper.check_reg("eprop", 0.5), "eprop: ", "`reg`", "FiringRateReg", "got 0.5"),
]


@pytest.mark.parametrize(("fn", "exc", "parts"), CELLS + TASKS + NETWORKS + REG)
def test_bad_hyperparameter(fn, exc, parts):
    """(``digits`` checks its options before it imports scikit-learn: nothing to skip.)"""
    _raises(exc, parts, fn)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files
# ----------------------------------------------------------------------------------------------------------

STATE = {"a": jnp.arange(3, dtype=jnp.float32), "b": jnp.zeros((2, 2), jnp.int32)}


def _saved(tmp):
    path = os.path.join(tmp, "state.npz")
    ep.online.save_state(path, STATE)
    return path


def _write(tmp, name, data: bytes):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _truncated(tmp):
    raw = open(_saved(tmp), "rb").read()
    return _write(tmp, "truncated.npz", raw[: len(raw) // 2])


def _flipped(tmp):
    raw = bytearray(open(_saved(tmp), "rb").read())
    raw[len(raw) // 3 : len(raw) // 3 + 40] = b"\xff" * 40
    return _write(tmp, "flipped.npz", bytes(raw))


def _foreign(tmp):
    path = os.path.join(tmp, "foreign.npz")
    np.savez(path, weights=np.ones(3))
    return path


def _npy(tmp):
    path = os.path.join(tmp, "array.npy")
    np.save(path, np.ones(3))
    return path


def _objects(tmp):
    path = os.path.join(tmp, "objects.npz")
    np.savez(path, __eproptax__=np.array("eproptax.online_state/2"), x=np.array([{}], dtype=object))
    return path


def _load(make, like=None):
    return lambda tmp: ep.online.load_state(make(tmp), like=STATE if like is None else like)


FILES = [
    case(
        "load-missing",
        _load(lambda tmp: os.path.join(tmp, "nope.npz")),
        "load_state",
        "nope.npz",
        exc=FileNotFoundError,
    ),
    case("load-folder", _load(lambda tmp: tmp), "load_state", "is a folder", exc=IsADirectoryError),
    case(
        "load-text", _load(lambda tmp: _write(tmp, "notes.txt", b"hello\n")), "notes.txt", "not written by", "b'hell'"
    ),
    case(
        "load-random-bytes",
        _load(lambda tmp: _write(tmp, "random.npz", np.random.RandomState(0).bytes(500))),
        "random.npz",
        "not written by",
    ),
    case("load-empty", _load(lambda tmp: _write(tmp, "empty.npz", b"")), "empty.npz", "is empty"),
    case("load-truncated", _load(_truncated), "truncated.npz", "truncated or corrupt"),
    case("load-corrupt", _load(_flipped), "flipped.npz", "truncated or corrupt"),
    case("load-foreign-npz", _load(_foreign), "foreign.npz", "not written by ep.online.save_state", "__eproptax__"),
    case("load-npy", _load(_npy), "array.npy", "not written by"),
    case("load-object-array", _load(_objects), "entry 'x'", "objects.npz", "cannot be read"),
    case(
        "load-shape-mismatch",
        _load(_saved, {**STATE, "a": jnp.zeros(4, jnp.float32)}),
        "leaf ['a']",
        "state.npz",
        "expected (4,)",
    ),
    case("load-dtype-mismatch", _load(_saved, {**STATE, "a": jnp.zeros(3, jnp.int32)}), "leaf ['a']", "dtype float32"),
    case("load-missing-leaf", _load(_saved, {**STATE, "c": jnp.zeros(1)}), "leaf ['c']", "missing from", "state.npz"),
    case("load-extra-leaf", _load(_saved, {"a": STATE["a"]}), "state.npz", "`like` does not", "['b']"),
    case(
        "save-missing-folder",
        lambda tmp: ep.online.save_state(os.path.join(tmp, "no", "such", "state.npz"), STATE),
        "save_state",
        "the folder",
        os.path.join("no", "such") + "'",
        "does not exist",
        exc=FileNotFoundError,
    ),
    case(
        "save-onto-folder",
        lambda tmp: ep.online.save_state(tmp, STATE),
        "save_state",
        "it is a folder",
        exc=IsADirectoryError,
    ),
    case(
        "save-string-leaf",
        lambda tmp: ep.online.save_state(os.path.join(tmp, "s.npz"), {"s": np.array(["x"])}),
        "['s']",
    ),
]


@pytest.mark.parametrize(("fn", "exc", "parts"), FILES)
def test_bad_state_file(fn, exc, parts, tmp_path):
    _raises(exc, parts, fn, str(tmp_path))


def test_load_state_never_shows_numpy_or_zipfile_messages(tmp_path):
    tmp = str(tmp_path)
    for path in (_write(tmp, "random.npz", np.random.RandomState(1).bytes(64)), _truncated(tmp), _flipped(tmp)):
        with pytest.raises(ValueError) as info:
            ep.online.load_state(path, like=STATE)
        message = str(info.value)
        assert "pickle" not in message and "zip file" not in message and os.path.basename(path) in message
        assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_save_and_load_still_round_trip(tmp_path):
    restored = ep.online.load_state(_saved(str(tmp_path)), like=STATE)
    for key in STATE:
        assert restored[key].dtype == STATE[key].dtype and np.array_equal(restored[key], STATE[key])
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------
# What must keep working
# ----------------------------------------------------------------------------------------------------------


def test_the_table_is_large_enough():
    assert len(CELLS + TASKS + NETWORKS + REG + FILES) >= 45


def test_shipped_defaults_build():
    for make in (C.lif, C.alif, C.rnn, C.lstm, C.gru, C.readout, C.leaky_readout):
        assert make(3, 4).n_out == 4
    for name, factory in T.TASKS.items():
        if name == "digits":
            continue  # needs scikit-learn's data (2 s to import): tests/test_tasks.py builds it
        task = factory()
        assert task.time_steps > 0 and task.n_in > 0
        _hyper.check_reg(name, task.reg)
    _hyper.check_reg("eprop", None)


def test_task_networks_build_with_their_defaults():
    """Every task's network, with its default options (only traced: ``eval_shape``, nothing runs)."""
    for name, factory in T.TASKS.items():
        if name == "digits":
            continue
        task = factory()
        params = jax.eval_shape(lambda task=task: task.network(KEY, n_rec=4)[1])
        assert len(params) == 2 and any(task.n_in in leaf.shape for leaf in jax.tree_util.tree_leaves(params[0]))
    evidence = T.evidence_accumulation(dt=25.0)
    params = jax.eval_shape(lambda: evidence.network(KEY, n_rec=4)[1])
    assert params[0]["w_in"].shape == (4, 40)


def test_accepted_forms():
    """numpy ints, per-neuron arrays, bfloat16, concrete JAX scalars and dtype names are all fine."""
    C.lif(np.int64(2), np.int32(3), tau_mem=np.array([10.0, 20.0, 30.0]), n_refractory=np.array([0, 1, 2]))
    C.alif(2, 3, beta=jnp.array([0.0, 0.1, 0.2]), tau_adapt=jnp.float32(50.0), n_refractory=jnp.int32(1))
    C.lif(2, 3, dtype=jnp.bfloat16, zeta=1.0, surrogate_width=0.5, surrogate="arctan")
    C.leaky_readout(3, 2, tau_out=5, dt=1, dtype="float32")
    C.rnn(2, 3, dtype=np.float64)


def test_traced_hyperparameters_are_skipped():
    """Built inside ``jax.vmap`` / ``jax.jit``, a cell takes traced time constants (the checks skip tracers)."""
    alpha = jax.vmap(lambda tau: C.lif(2, 3, tau_mem=tau).leak[0])(jnp.array([5.0, 20.0]))
    np.testing.assert_allclose(alpha, np.exp(-1.0 / np.array([5.0, 20.0])), rtol=1e-6)
    kappa = jax.jit(lambda tau: C.leaky_readout(3, 1, tau_out=tau).leak[0])(10.0)
    np.testing.assert_allclose(kappa, np.exp(-0.1), rtol=1e-6)
    rho = jax.vmap(lambda tau, beta: C.alif(2, 3, tau_adapt=tau, beta=beta, threshold=beta).leak[0][0])(
        jnp.array([5.0, 20.0]), jnp.array([0.1, 0.2])
    )
    assert rho.shape == (2,)
    refractory = jax.vmap(lambda n: C.lif(2, 3, n_refractory=n).leak[0])(jnp.array([0, 2]))
    assert refractory.shape == (2,)
    c_reg = jax.vmap(lambda c: (_hyper.check_reg("eprop", ep.FiringRateReg(c, 0.01)), c)[1])(jnp.array([0.1, 1.0]))
    assert c_reg.shape == (2,)
