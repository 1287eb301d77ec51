"""Runs inside the NEST virtual environment (benchmarks/.envs/nest): one e-prop learning interval in NEST.

    python _nest_side.py in.npz out.npz

``in.npz`` holds ``x`` (T, n_in) input spikes (row 0 must be zero: NEST drops spikes at step 0),
``y`` (T, n_out) targets, ``w_in`` (n_rec, n_in), ``w_rec`` (n_rec, n_rec), ``w_out`` (n_out, n_rec) (post x
pre), and the scalars ``tau_m``, ``tau_out``, ``V_th``, ``height``, ``width``, ``repeats``. The network is
NEST's ``eprop_iaf_bsshslm_2020`` LIF neurons and ``eprop_readout_bsshslm_2020`` leaky readouts with
symmetric feedback, wired and timed as NEST's own example
(``eprop_supervised_regression_sine-waves_bsshslm_2020.py``: spike generators -> parrots -> recurrent
neurons -> readouts, delays of one step, a final spike that triggers the weight update) with one update
interval of T steps, plain gradient descent with eta = 1 and no regularisation, so that the gradient is
``w_before - w_after``. ``out.npz`` gets the gradients and ``simulate_s``: the wall time of
``nest.Simulate`` (minimum over ``repeats`` fresh kernels; building the network is not counted).
"""

import sys
import time

import nest
import numpy as np

nest.set_verbosity("M_ERROR") if hasattr(nest, "set_verbosity") else None


def run(data):
    x, y = data["x"], data["y"]
    T, n_in = x.shape
    n_out, n_rec = data["w_out"].shape
    offset_gen, delay_in_rec, delay_rec_out, delay_out_norm = 1, 1, 1, 1
    delays = delay_in_rec + delay_rec_out + delay_out_norm
    total_offset = offset_gen + delays
    nest.ResetKernel()
    nest.set(
        eprop_learning_window=float(T),
        eprop_reset_neurons_on_update=True,
        eprop_update_interval=float(T),
        print_time=False,
        resolution=1.0,
        total_num_virtual_procs=1,
    )
    rec_params = {
        "C_m": 1.0,
        "c_reg": 0.0,
        "E_L": 0.0,
        "f_target": 10.0,
        "I_e": 0.0,
        "regular_spike_arrival": False,
        "surrogate_gradient_function": "piecewise_linear",
        "surrogate_gradient_height": float(data["height"]),
        "surrogate_gradient_width": float(data["width"]),
        "t_ref": 0.0,
        "tau_m": float(data["tau_m"]),
        "V_m": 0.0,
        "V_th": float(data["V_th"]),
        "flush_event_send_interval": float(T),
    }
    out_params = {
        "C_m": 1.0,
        "E_L": 0.0,
        "I_e": 0.0,
        "loss": "mean_squared_error",
        "regular_spike_arrival": False,
        "tau_m": float(data["tau_out"]),
        "V_m": 0.0,
    }
    gen_in = nest.Create("spike_generator", n_in)
    parrots = nest.Create("parrot_neuron", n_in)
    rec = nest.Create("eprop_iaf_bsshslm_2020", n_rec, rec_params)
    out = nest.Create("eprop_readout_bsshslm_2020", n_out, out_params)
    gen_target = nest.Create("step_rate_generator", n_out)
    nest.SetDefaults(
        "eprop_synapse_bsshslm_2020",
        {
            "optimizer": {"type": "gradient_descent", "batch_size": 1, "eta": 1.0, "Wmin": -1e6, "Wmax": 1e6},
            "average_gradient": False,
        },
    )
    base = {"synapse_model": "eprop_synapse_bsshslm_2020", "delay": 1.0, "tau_m_readout": float(data["tau_out"])}
    all_to_all = {"rule": "all_to_all", "allow_autapses": False}
    nest.Connect(gen_in, parrots, {"rule": "one_to_one"}, {"synapse_model": "static_synapse", "delay": 1.0})
    nest.Connect(parrots, rec, all_to_all, {**base, "weight": data["w_in"]})
    nest.Connect(rec, rec, all_to_all, {**base, "weight": data["w_rec"]})
    nest.Connect(rec, out, all_to_all, {**base, "weight": data["w_out"]})
    nest.Connect(
        out,
        rec,
        all_to_all,
        {"synapse_model": "eprop_learning_signal_connection_bsshslm_2020", "delay": 1.0, "weight": data["w_out"].T},
    )
    nest.Connect(
        gen_target,
        out,
        {"rule": "one_to_one"},
        {"synapse_model": "rate_connection_delayed", "delay": 1.0, "receptor_type": 2},
    )
    steps = np.arange(T, dtype=float)
    gen_in.set([{"spike_times": (steps[x[:, i] > 0] + offset_gen).astype(float)} for i in range(n_in)])
    gen_target.set(
        [{"amplitude_times": steps + total_offset, "amplitude_values": y[:, m].astype(float)} for m in range(n_out)]
    )
    final = nest.Create("spike_generator", 1, {"spike_times": [float(T + delays)]})
    nest.Connect(final, parrots + rec, "all_to_all", {"weight": 1000.0})

    def weights(pre, post):
        conns = nest.GetConnections(pre, post).get(["source", "target", "weight"])
        w = np.zeros((len(post), len(pre)))
        w[np.array(conns["target"]) - min(post.tolist()), np.array(conns["source"]) - min(pre.tolist())] = conns[
            "weight"
        ]
        return w

    before = {k: weights(*pop) for k, pop in (("w_in", (parrots, rec)), ("w_rec", (rec, rec)), ("w_out", (rec, out)))}
    start = time.perf_counter()
    nest.Simulate(float(T + total_offset + 1))
    seconds = time.perf_counter() - start
    after = {k: weights(*pop) for k, pop in (("w_in", (parrots, rec)), ("w_rec", (rec, rec)), ("w_out", (rec, out)))}
    return {k: before[k] - after[k] for k in before}, seconds


def main(src, dst):
    data = dict(np.load(src))
    grads, best = None, float("inf")
    for _ in range(int(data.get("repeats", 1))):
        grads, seconds = run(data)
        best = min(best, seconds)
    np.savez(dst, simulate_s=best, nest_version=str(nest.__version__), **grads)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
