"""Records NEST's legacy e-prop regression test as tests/fixtures/nest_eprop_bsshslm_2020_regression.json.

    python benchmarks/record_nest_regression.py

NEST 3.10 ships ``testsuite/pytests/synapses/test_eprop_bsshslm_2020_plasticity.py``, whose
``test_eprop_regression`` (sine-wave regression, ``eprop_iaf_bsshslm_2020``, gradient descent) and
``test_eprop_classification`` (evidence accumulation, 50 ``eprop_iaf_bsshslm_2020`` + 50
``eprop_iaf_adapt_bsshslm_2020`` neurons, Adam, ``average_gradient``, batches of 1 and 2) train five iterations
each and compare the losses with reference values. This script creates ``benchmarks/.envs/nest`` (pip:
``nest-simulator==3.10.0``, numpy, pytest; see ``peers.ensure_env``) and runs those test functions as they are,
from the installed wheel, with ``nest.Simulate`` wrapped so that, just before NEST simulates, it reads the
network the test built: the kernel's and the models' parameters, the optimizer, the initial weights, the
feedback weights, every input spike and every target. The unmodified run gives NEST's losses (computed as the
test computes them, from the readouts' recordings; the test's own assertions then run too). Each further run
``n = 1..5`` stops after ``n`` iterations with one extra spike into every input and recurrent neuron, which makes
every e-prop synapse apply its pending update (NEST updates a synapse lazily, at its next presynaptic spike),
and reads the weights: NEST's weights after each iteration.

Everything is stored on NEST's logical time steps (``k = 0..T-1`` of each sequence; the simulator's offsets
undone) as described in tests/fixtures/README.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "nest_eprop_bsshslm_2020_regression.json")
TEST = "nest/share/nest/testsuite/pytests/synapses/test_eprop_bsshslm_2020_plasticity.py"
SCENARIOS = {  # fixture name -> (test function, pytest parameters)
    "sine_regression": ("test_eprop_regression", {}),
    "evidence_batch1": ("test_eprop_classification", {"batch_size": 1}),
    "evidence_batch2": ("test_eprop_classification", {"batch_size": 2}),
}
# the test's timing (steps): inputs are generated one step late, and a spike needs 3 more steps to reach a readout
OFFSET_GEN, DELAYS = 1, 3
SAMPLE = 300  # synapses per weight matrix whose weights after each iteration are stored
REC_MODELS = ("eprop_iaf_bsshslm_2020", "eprop_iaf_adapt_bsshslm_2020")
REC_KEYS = (
    "C_m", "E_L", "I_e", "V_m", "V_th", "c_reg", "f_target", "regular_spike_arrival", "surrogate_gradient_function",
    "surrogate_gradient_height", "surrogate_gradient_width", "t_ref", "tau_m", "adapt_beta", "adapt_tau",
)  # fmt: skip
OUT_KEYS = ("C_m", "E_L", "I_e", "V_m", "loss", "regular_spike_arrival", "tau_m")


# ----------------------------------------------------------------------------------------------------------
# Inside the NEST environment
# ----------------------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Ends a truncated run once its weights are read (the test's own evaluation is skipped)."""


class _NestProxy:
    """The ``nest`` module with ``Simulate`` replaceable."""

    def __init__(self, module):
        self._module = module
        self.Simulate = module.Simulate

    def __getattr__(self, name):
        return getattr(self._module, name)


def _nodes(nest, model):
    return nest.GetNodes({"model": model})


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _weights(nest, np, pre, post, synapse_model):
    """``(len(post), len(pre))`` weights, post x pre; 0 where not connected."""
    conns = nest.GetConnections(pre, post, synapse_model=synapse_model).get(["source", "target", "weight"])
    ids_pre, ids_post = {n: i for i, n in enumerate(pre.tolist())}, {n: i for i, n in enumerate(post.tolist())}
    w = np.zeros((len(post), len(pre)))
    for s, t, v in zip(conns["source"], conns["target"], conns["weight"]):
        w[ids_post[t], ids_pre[s]] = v
    return w


def _populations(nest):
    parrots = _nodes(nest, "parrot_neuron")
    rec = sum((_nodes(nest, m) for m in REC_MODELS[1:]), _nodes(nest, REC_MODELS[0]))
    return parrots, rec, _nodes(nest, "eprop_readout_bsshslm_2020")


def _all_weights(nest, np):
    parrots, rec, out = _populations(nest)
    syn = "eprop_synapse_bsshslm_2020"
    return {
        "w_in": _weights(nest, np, parrots, rec, syn),
        "w_rec": _weights(nest, np, rec, rec, syn),
        "w_out": _weights(nest, np, rec, out, syn),
    }


def _network(nest, np):
    """What the test built: parameters, weights, inputs and targets on logical steps (called before Simulate)."""
    kernel = nest.GetKernelStatus()
    dt = kernel["resolution"]
    T = int(round(kernel["eprop_update_interval"] / dt))
    parrots, rec, out = _populations(nest)
    rec_params = []
    for model in REC_MODELS:
        nodes = _nodes(nest, model)
        if len(nodes):
            status = nodes[0].get()
            rec_params.append({"model": model, "n": len(nodes), **{k: status[k] for k in REC_KEYS if k in status}})
    out_status = out[0].get()
    syn = nest.GetDefaults("eprop_synapse_bsshslm_2020")
    optimizer = {k: v for k, v in syn["optimizer"].items()}
    targets = []
    for g in _nodes(nest, "step_rate_generator"):
        times = np.rint(np.asarray(g.get("amplitude_times")) / dt).astype(int) - OFFSET_GEN - DELAYS
        values = np.asarray(g.get("amplitude_values"))
        n_seq = int(times[-1]) // T + 1
        y = np.zeros(n_seq * T)
        for start, stop, value in zip(times, list(times[1:]) + [n_seq * T], values):  # a step function
            y[start:stop] = value
        targets.append(y.reshape(n_seq, T))
    gens = _nodes(nest, "spike_generator")
    x = np.zeros((n_seq, T, len(gens)), np.uint8)
    for i, g in enumerate(gens):
        steps = np.rint(np.asarray(g.get("spike_times")) / dt).astype(int) - OFFSET_GEN
        x[steps // T, steps % T, i] = 1
    return {
        "dt": dt,
        "T": T,
        "learning_window": int(round(kernel["eprop_learning_window"] / dt)),
        "reset_neurons_on_update": kernel["eprop_reset_neurons_on_update"],
        "rec": rec_params,
        "out": {k: out_status[k] for k in OUT_KEYS},
        "n_in": len(parrots),
        "n_rec": len(rec),
        "n_out": len(out),
        "optimizer": optimizer,
        "average_gradient": syn["average_gradient"],
        "weights_initial": _all_weights(nest, np),
        "feedback": _weights(nest, np, out, rec, "eprop_learning_signal_connection_bsshslm_2020"),
        "x": x,
        "y": np.stack(targets, -1),
    }


def _readout_loss(nest, np, net, batch_size):
    """NEST's loss per iteration, computed as the test computes it from the readouts' recordings."""
    mm = [m for m in _nodes(nest, "multimeter") if "readout_signal" in m.get("record_from")][0]
    events = mm.get("events")
    senders = np.asarray(events["senders"])
    T, window = net["T"], net["learning_window"]
    shape = (net["n_out"], -1, batch_size, T)
    r = np.array([np.asarray(events["readout_signal"])[senders == i] for i in np.unique(senders)]).reshape(shape)
    y = np.array([np.asarray(events["target_signal"])[senders == i] for i in np.unique(senders)]).reshape(shape)
    if net["out"]["loss"] == "cross_entropy":
        r, y = r[..., -window:], y[..., -window:]
        return -np.mean(np.sum(y * np.log(r), axis=0), axis=(1, 2))
    return 0.5 * np.mean(np.sum((r - y) ** 2, axis=3), axis=(0, 2))


def _side(out_path):
    """Runs every scenario in NEST (this process must be the NEST environment's interpreter)."""
    import importlib.util
    import inspect

    import nest
    import numpy as np

    path = os.path.join(os.path.dirname(os.path.dirname(nest.__file__)), TEST)
    spec = importlib.util.spec_from_file_location("nest_legacy_test", path)
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    source = open(path).read()
    simulate = nest.Simulate
    proxy = _NestProxy(nest)
    test.nest = proxy  # the test's `nest.Simulate` becomes the hook below (the module's attribute is read-only)
    fixture = {"nest_version": nest.__version__, "test_file": TEST, "scenarios": {}}

    for name, (function, kwargs) in SCENARIOS.items():
        batch_size = kwargs.get("batch_size", 1)
        reference = _reference_losses(source, function, batch_size)
        captured = {}

        def full_run(duration):
            captured["net"] = _network(nest, np)
            simulate(duration)
            captured["loss"] = _readout_loss(nest, np, captured["net"], batch_size)

        proxy.Simulate = full_run
        params = inspect.signature(getattr(test, function)).parameters
        call = lambda: getattr(test, function)(**({"loss_nest_reference": reference} if params else {}), **kwargs)
        call()  # the test itself: its assertions against NEST's and TensorFlow's reference losses run here
        net = captured["net"]
        n_iter = net["x"].shape[0] // batch_size
        weights = []
        for n in range(1, n_iter + 1):

            def truncated(duration, n=n):
                task = n * batch_size * net["T"]
                trigger = nest.Create("spike_generator", 1, {"spike_times": [float(task + DELAYS)]})
                parrots, rec, _ = _populations(nest)
                nest.Connect(trigger, parrots + rec, "all_to_all", {"weight": 1000.0})
                simulate(float(task + OFFSET_GEN + DELAYS + 1))
                captured["weights"] = _all_weights(nest, np)
                raise _Stop

            proxy.Simulate = truncated
            try:
                call()
            except _Stop:
                pass
            weights.append(captured.pop("weights"))
        fixture["scenarios"][name] = _compact(np, net, weights, n_iter, batch_size, reference, captured["loss"])
        fixture["scenarios"][name]["test"] = f"{function}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        print(f"{name}: NEST losses {np.asarray(captured['loss']).tolist()}", flush=True)
    with open(out_path, "w") as f:
        json.dump(_plain(fixture), f, separators=(",", ":"))


def _float32(np, w):
    """Weights that the test drew in float32, as the shortest decimals that read back as the same float32."""
    w = np.asarray(w)
    assert np.all(w.astype(np.float32).astype(np.float64) == w), "expected float32 weights"
    return [[float(np.format_float_positional(np.float32(v), unique=True)) for v in row] for row in w]


def _compact(np, net, weights, n_iter, batch_size, reference, loss):
    """The scenario's fixture entry. Weights after each iteration are stored for a fixed sample of synapses
    (``SAMPLE`` per weight matrix, drawn once with a fixed seed among the existing connections; every synapse
    of a smaller matrix), in float64."""
    rng = np.random.default_rng(0)
    sample, after = {}, [{} for _ in weights]
    for key, w0 in net["weights_initial"].items():
        post, pre = np.nonzero(np.ones_like(w0, bool) if key != "w_rec" else ~np.eye(len(w0), dtype=bool))
        pick = np.sort(rng.choice(len(post), min(SAMPLE, len(post)), replace=False))
        sample[key] = np.stack([post[pick], pre[pick]], 1).tolist()
        for i, w in enumerate(weights):
            after[i][key] = np.asarray(w[key])[post[pick], pre[pick]].tolist()
    y = net["y"]
    unique, index = np.unique(y.reshape(len(y), -1), axis=0, return_inverse=True)
    return {
        "batch_size": batch_size,
        "n_iter": n_iter,
        "loss_nest_reference": reference,
        "loss_nest": loss,
        **{k: v for k, v in net.items() if k not in ("x", "y", "weights_initial", "feedback")},
        "weights_initial": {k: _float32(np, w) for k, w in net["weights_initial"].items()},
        "feedback": _float32(np, net["feedback"]),
        "x": _spike_lists(np, net["x"]),
        "y": {"unique": unique.reshape((-1,) + y.shape[1:]), "index": np.ravel(index)},
        "sample": sample,
        "weights_after": after,
    }


def _spike_lists(np, x):
    """0/1 spikes ``(n_seq, T, n_in)`` as, per sequence and input neuron, the list of steps with a spike."""
    return [[np.flatnonzero(seq[:, i]).tolist() for i in range(seq.shape[1])] for seq in x]


def _reference_losses(source: str, function: str, batch_size: int) -> list[float]:
    """NEST's reference losses for one scenario, read from the test file's text."""
    body = source[source.index(f"def {function}") :] if function == "test_eprop_regression" else source
    if function == "test_eprop_regression":
        block = re.search(r"loss_nest_reference = \[(.*?)\]", body, re.S).group(1)
    else:  # the parametrize list of test_eprop_classification: (batch_size, [losses]) pairs
        params = source[
            source.index('"batch_size,loss_nest_reference"') : source.index("def test_eprop_classification")
        ]
        block = re.search(rf"\(\s*{batch_size},\s*\[(.*?)\]", params, re.S).group(1)
    return [float(v) for v in re.findall(r"[-+0-9.eE]+", block)]


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------


def main():
    sys.path.insert(0, HERE)
    from peers import ensure_env

    exe = ensure_env("nest", sys.executable, ["nest-simulator==3.10.0", "numpy", "pytest"])
    subprocess.run([exe, os.path.abspath(__file__), "--side", OUT], check=True)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e6:.2f} MB)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--side":
        _side(sys.argv[2])
    else:
        main()
