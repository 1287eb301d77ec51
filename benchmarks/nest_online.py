"""NEST 3.10's online e-prop against ``ep.nest.online_eprop`` on NEST's sine-wave regression example.

The network of ``eprop_supervised_regression_sine-waves.py`` (100 inputs, 100 ``eprop_iaf``, one readout,
sequences of 1000 steps, gradient descent at presynaptic spikes, cutoff and flush interval of 100 ms and one
sequence), identical weights, inputs and targets on both sides. NEST runs in ``benchmarks/.envs/nest``
(``pip install nest-simulator==3.10.0``, as ``peers.py`` creates it) in a subprocess that times ``nest.Simulate``
only (building the network is not counted); eproptax times its jitted ``learner.run`` (compilation excluded,
minimum of ``--repeats``). Both sides report their losses per sequence, which must agree (float64).

    python benchmarks/nest_online.py [--iters 5] [--repeats 3] [--float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
NEST_PYTHON = ROOT / ".envs" / "nest" / "bin" / "python"
SEQ, N_IN, N_REC, N_OUT, KAPPA = 1000, 100, 100, 1, 0.97
REC = dict(C_m=1.0, E_L=0.0, V_m=0.0, V_th=0.03, tau_m=30.0, t_ref=0.0, I_e=0.0, c_reg=300.0 / SEQ, f_target=10.0,
           kappa=KAPPA, kappa_reg=0.97, surrogate_gradient_function="piecewise_linear",
           surrogate_gradient_height=10.0, surrogate_gradient_width=1.0 / 33.3, eprop_isi_trace_cutoff=100.0,
           flush_event_send_interval=float(SEQ))  # fmt: skip
OUT = dict(C_m=1.0, E_L=0.0, V_m=0.0, tau_m=30.0, I_e=0.0, eprop_isi_trace_cutoff=100.0)
ETA = 1e-4 * (1.0 - KAPPA) ** 2

NEST_SIDE = r"""
import json, sys, time
import numpy as np
import nest
d = np.load(sys.argv[1]); cfg = json.loads(sys.argv[2])
nest.set_verbosity("M_ERROR"); nest.ResetKernel()
nest.set(resolution=1.0, total_num_virtual_procs=1, print_time=False)
n_in, n_rec, n_out, T = cfg["n_in"], cfg["n_rec"], cfg["n_out"], cfg["T"]
gen = nest.Create("spike_generator", n_in); par = nest.Create("parrot_neuron", n_in)
rec = nest.Create("eprop_iaf", n_rec, cfg["rec"]); out = nest.Create("eprop_readout", n_out, cfg["out"])
tgt = nest.Create("step_rate_generator", n_out); win = nest.Create("step_rate_generator")
mm = nest.Create("multimeter", params={"interval": 1.0, "record_from": ["readout_signal", "target_signal"]})
nest.SetDefaults("eprop_synapse", {"optimizer": {"type": "gradient_descent", "batch_size": 1, "eta": cfg["eta"],
                 "optimize_each_step": False, "Wmin": -100.0, "Wmax": 100.0}})
syn = {"synapse_model": "eprop_synapse", "delay": 1.0}
static = {"synapse_model": "static_synapse", "delay": 1.0}
nest.Connect(gen, par, "one_to_one", static)
nest.Connect(par, rec, "all_to_all", {**syn, "weight": d["w_in"]})
nest.Connect(rec, rec, {"rule": "all_to_all", "allow_autapses": False}, {**syn, "weight": d["w_rec"]})
nest.Connect(rec, out, "all_to_all", {**syn, "weight": d["w_out"]})
nest.Connect(out, rec, "all_to_all", {"synapse_model": "eprop_learning_signal_connection", "delay": 1.0,
             "weight": d["B"]})
nest.Connect(tgt, out, "one_to_one", {"synapse_model": "rate_connection_delayed", "delay": 1.0, "receptor_type": 2})
nest.Connect(win, out, "all_to_all", {"synapse_model": "rate_connection_delayed", "delay": 1.0, "receptor_type": 1})
nest.Connect(mm, out, "all_to_all", static)
x = d["inputs"]
gen.set([{"spike_times": (np.nonzero(x[:, i])[0] - 1).astype(float)} for i in range(n_in)])
tgt.set({"amplitude_times": np.arange(2.0, T), "amplitude_values": d["targets"][2:, 0]})
win.set({"amplitude_times": [2.0], "amplitude_values": [1.0]})
t0 = time.perf_counter(); nest.Simulate(float(T)); wall = time.perf_counter() - t0
ev = mm.get("events"); order = np.argsort(ev["times"])
y, yt = ev["readout_signal"][order], ev["target_signal"][order]
print(json.dumps({"wall_s": wall, "y": y.tolist(), "target": yt.tolist()}))
"""


def problem(n_iter: int):
    rng = np.random.default_rng(1)
    scale = 1.0 - KAPPA
    w = {
        "w_in": rng.standard_normal((N_REC, N_IN)) / np.sqrt(N_IN) * scale,
        "w_rec": rng.standard_normal((N_REC, N_REC)) / np.sqrt(N_REC) * scale,
        "w_out": rng.standard_normal((N_OUT, N_REC)) / np.sqrt(N_REC) * scale,
        "B": rng.standard_normal((N_REC, N_OUT)) / np.sqrt(N_REC) * scale,
    }
    np.fill_diagonal(w["w_rec"], 0.0)
    frozen = (rng.random((SEQ, N_IN)) < 0.05).astype(float)
    t = np.arange(SEQ) / SEQ
    amplitudes, phases = rng.uniform(0.5, 2, 4), rng.uniform(0, 2 * np.pi, 4)
    target = sum(
        a * np.sin(2 * np.pi * SEQ / p * t + ph) for a, p, ph in zip(amplitudes, [1000, 500, 333, 200], phases)
    )
    target = (target - target[0]) / np.abs(target - target[0]).max()
    T = n_iter * SEQ + 3
    inputs = np.zeros((T, N_IN))
    inputs[2 : 2 + n_iter * SEQ] = np.tile(frozen, (n_iter, 1))
    targets = np.zeros((T, N_OUT))
    targets[2 : 2 + n_iter * SEQ, 0] = np.tile(target, n_iter)
    windows = np.zeros(T)
    windows[2:] = 1.0
    return w, inputs, targets, windows


def run_eproptax(w, inputs, targets, windows, repeats, dtype):
    import jax

    import eproptax as ep

    rec = ep.nest.eprop_iaf(N_REC, **REC)
    out = ep.nest.eprop_readout(N_OUT, **OUT)
    learner = ep.nest.online_eprop(rec, out, eta=ETA, optimize_each_step=False)
    cast = lambda a: np.asarray(a, dtype)  # noqa: E731
    weights = ep.nest.OnlineWeights(cast(w["w_in"]), cast(w["w_rec"]), cast(w["w_out"]))
    run = jax.jit(lambda state, *xs: learner.run(state, *xs)[1].out.readout_signal)
    args = (learner.init(weights, cast(w["B"])), cast(inputs), cast(targets), cast(windows))
    jax.block_until_ready(run(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = jax.block_until_ready(run(*args))
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(y)[:, 0], jax.devices()[0].device_kind


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--float32", action="store_true")
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    w, inputs, targets, windows = problem(args.iters)
    dtype = np.float32 if args.float32 else np.float64
    ours, y, device = run_eproptax(w, inputs, targets, windows, args.repeats, dtype)
    result = {"iters": args.iters, "steps": len(inputs), "device": device, "dtype": np.dtype(dtype).name}
    result["eproptax_s"] = ours
    if NEST_PYTHON.exists():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "problem.npz"
            np.savez(path, inputs=inputs, targets=targets, **w)
            cfg = dict(n_in=N_IN, n_rec=N_REC, n_out=N_OUT, T=len(inputs), rec=REC, out=OUT, eta=ETA)
            proc = subprocess.run(
                [str(NEST_PYTHON), "-c", NEST_SIDE, str(path), json.dumps(cfg)], capture_output=True, text=True
            )
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            nest_out = json.loads(proc.stdout.strip().splitlines()[-1])
        y_nest = np.asarray(nest_out["y"])  # the multimeter reports steps 0 .. T - 2
        result["nest_simulate_s"] = nest_out["wall_s"]
        result["speedup"] = nest_out["wall_s"] / ours
        result["readout_max_rel_err"] = float(np.max(np.abs(y[: len(y_nest)] - y_nest)) / np.max(np.abs(y_nest)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
