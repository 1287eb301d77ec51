"""eproptax against its peers on identical networks and weights: NEST's e-prop and braintrace.

Each peer runs in its own virtual environment, created by this script under ``benchmarks/.envs/``
(gitignored), and exchanges inputs, weights and gradients with this process as ``.npz`` files.

* NEST (``pip install nest-simulator``): its ``eprop_iaf_bsshslm_2020`` / ``eprop_readout_bsshslm_2020``
  models, configured as in ``shared/oracles/nest_eprop/README.md`` (see ``_nest_side.py``). The NEST side is
  first checked against the shared NEST fixture (it must reproduce the fixture's gradients), then run on a
  100-neuron LIF network with a leaky readout (100 Poisson inputs, one readout, T = 1000 steps, one
  sequence: NEST simulates one sequence per learning interval). Reported: NEST's ``Simulate`` wall time
  against ``jax.jit(ep.eprop(...))`` on the same sequence (float32 and float64), and the gradients'
  relative error (float64). The target: eproptax at least 10 times faster.
* braintrace (``pip install braintrace==0.2.8``, Python 3.12): its D-RTRL, e-prop, SnAp-1, SnAp-2 and UORO
  on a GRU and a LIF network, and pp_prop (ES-D-RTRL; decay 0.5 on both, ``(alpha, 0)`` on the LIF), against
  eproptax's ``eprop``, ``snap(n=1)``, ``snap(n=2)``, ``uoro`` and ``pp_prop``, where it can be installed (see
  ``_braintrace_side.py`` and ``_braintrace_peer.py``).

Writes ``peers.json`` (and ``peers.png``) to ``benchmarks/results/<device>/``.

    python benchmarks/peers.py [--quick] [--skip nest|braintrace]

``--skip`` keeps the skipped peer's rows from the last ``peers.json``, each with the ``info`` of the run
that measured it (``measured_with``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)  # the gradients are compared in float64; timings use float32 too

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HERE, parser, pyplot, results_dir, save, save_figure, title  # noqa: E402

import eproptax as ep  # noqa: E402
from eproptax._bench import _best_times  # noqa: E402
from eproptax._compare import mse  # noqa: E402

ENVS = os.path.join(HERE, ".envs")
BRAINTRACE = "0.2.8"  # the version whose public classes _braintrace_side.py uses (SnAp, UORO, pp_prop)
FIXTURES = [
    os.path.join(os.path.dirname(HERE), *parts, "nest_eprop_bsshslm_2020.json")
    for parts in (("tests", "data"), ("tests", "fixtures"), ("..", "shared", "oracles", "nest_eprop"))
]


def _log(msg):
    print(msg, flush=True)


def ensure_env(name: str, python: str, packages: list[str]) -> str:
    """Creates ``benchmarks/.envs/<name>`` with ``python -m venv`` and pip-installs ``packages``; returns its
    interpreter. Raises ``RuntimeError`` with pip's last lines when the install fails."""
    env = os.path.join(ENVS, name)
    exe = os.path.join(env, "bin", "python")
    marker = os.path.join(env, ".installed")
    if os.path.exists(marker):
        return exe
    os.makedirs(ENVS, exist_ok=True)
    _log(f"creating {env} ({python}) and installing {' '.join(packages)} ...")
    subprocess.run([python, "-m", "venv", env], check=True)
    proc = subprocess.run([exe, "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise RuntimeError(f"pip install {' '.join(packages)} failed in {env}:\n{tail}")
    open(marker, "w").close()
    return exe


def run_side(exe: str, script: str, payload: dict, timeout: int = 1800) -> dict:
    """Runs ``script`` in a peer's interpreter with ``payload`` as ``in.npz``; returns its ``out.npz``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, **payload)
        proc = subprocess.run(
            [exe, os.path.join(HERE, script), src, dst], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{script} failed:\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]))
        with np.load(dst) as out:
            return {k: out[k] for k in out.files}


def relative_error(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------------------
# NEST
# ----------------------------------------------------------------------------------------------------------


def lif_network(n_in, n_rec, n_out, *, tau_m, tau_out, V_th, height, width, dtype):
    """The NEST-compatible configuration of eproptax's cells (zeta = 1 - alpha, no autapses, reset detached)."""
    return ep.cells.stack(
        ep.cells.lif(
            n_in, n_rec, tau_mem=tau_m, threshold=V_th, surrogate_height=height, surrogate_width=width, dtype=dtype
        ),
        ep.cells.leaky_readout(n_rec, n_out, tau_out=tau_out, dtype=dtype),
    )


def eprop_gradient(payload, dtype, repeats=5):
    """eproptax's e-prop gradient of the NEST network and its time per call (jitted, after compilation)."""
    x, y = payload["x"], payload["y"]
    n_out, n_rec = payload["w_out"].shape
    model = lif_network(
        x.shape[1],
        n_rec,
        n_out,
        tau_m=float(payload["tau_m"]),
        tau_out=float(payload["tau_out"]),
        V_th=float(payload["V_th"]),
        height=float(payload["height"]),
        width=float(payload["width"]),
        dtype=dtype,
    )
    params = (
        {"w_in": jnp.asarray(payload["w_in"], dtype), "w_rec": jnp.asarray(payload["w_rec"], dtype)},
        {"w_out": jnp.asarray(payload["w_out"], dtype)},
    )
    inputs = jnp.asarray(x, dtype)[None]
    targets = {"y": jnp.asarray(y, dtype)[None], "mask": jnp.ones((1, x.shape[0]), dtype)}
    fn = jax.jit(ep.eprop(model, mse))
    _, grads = jax.block_until_ready(fn(params, inputs, targets))
    seconds, _ = _best_times(fn, params, inputs, targets, repeats=repeats)
    return {
        "w_in": np.asarray(grads[0]["w_in"]),
        "w_rec": np.asarray(grads[0]["w_rec"]),
        "w_out": np.asarray(grads[1]["w_out"]),
    }, seconds


def nest_fixture_check(exe) -> dict:
    """The NEST side must reproduce the shared NEST fixture (case ``lif``) before it is trusted."""
    path = next((p for p in FIXTURES if os.path.exists(p)), None)
    if path is None:
        _log("  NEST fixture not found: the NEST side is not checked against it")
        return None
    with open(path) as f:
        case = json.load(f)["cases"]["lif"]
    cfg = case["config"]
    payload = dict(
        x=np.array(case["inputs"]["x"], float),
        y=np.array(case["inputs"]["y_target"], float),
        **{k: np.array(case["weights_before"][k], float) for k in ("w_in", "w_rec", "w_out")},
        tau_m=cfg["rec"]["tau_m"],
        tau_out=cfg["out"]["tau_m"],
        V_th=cfg["rec"]["V_th"],
        height=cfg["rec"]["surrogate_gradient_height"],
        width=cfg["rec"]["surrogate_gradient_width"],
        repeats=1,
    )
    out = run_side(exe, "_nest_side.py", payload)
    errors = {k: relative_error(out[k], np.array(case["gradients"][k])) for k in ("w_in", "w_rec", "w_out")}
    _log(f"  NEST side vs the shared fixture (case lif): relative errors {errors}")
    return errors


def nest_problem(n_in=100, n_rec=100, n_out=1, T=1000, seed=0):
    """NEST's sine-wave regression network at one sequence: Poisson inputs (p = 0.05, none at step 0),
    weights N(0, 1/fan_in) without autapses, a smooth target."""
    rng = np.random.default_rng(seed)
    x = (rng.random((T, n_in)) < 0.05).astype(float)
    x[0] = 0.0
    t = np.arange(T)
    y = sum(
        a * np.sin(2 * np.pi * t / p + ph)
        for a, p, ph in zip(rng.uniform(0.5, 2.0, 4), (1000, 500, 333, 200), rng.uniform(0, 2 * np.pi, 4))
    )
    y = (y - y[0]) / np.abs(y - y[0]).max()
    w_rec = rng.standard_normal((n_rec, n_rec)) / np.sqrt(n_rec)
    np.fill_diagonal(w_rec, 0.0)
    return dict(
        x=x,
        y=np.repeat(y[:, None], n_out, 1),
        w_in=rng.standard_normal((n_rec, n_in)) / np.sqrt(n_in),
        w_rec=w_rec,
        w_out=rng.standard_normal((n_out, n_rec)) / np.sqrt(n_rec),
        tau_m=20.0,
        tau_out=30.0,
        V_th=0.03,
        height=10.0,
        width=0.03,
    )


def nest_peer(quick) -> dict:
    try:
        exe = ensure_env("nest", sys.executable, ["nest-simulator", "numpy"])
    except Exception as e:  # noqa: BLE001
        return dict(name="NEST e-prop", speedup=None, reason=f"install failed: {e}")
    fixture = nest_fixture_check(exe)
    T = 300 if quick else 1000
    payload = {**nest_problem(T=T), "repeats": 1 if quick else 3}
    out = run_side(exe, "_nest_side.py", payload)
    grads64, t64 = eprop_gradient(payload, jnp.float64)
    grads32, t32 = eprop_gradient(payload, jnp.float32)
    errors = {k: relative_error(grads64[k], out[k]) for k in grads64}
    errors32 = {k: relative_error(grads32[k], out[k]) for k in grads32}
    spikes = float(np.sum(payload["x"]))
    t_nest = float(out["simulate_s"])
    row = dict(
        name="NEST e-prop",
        network="LIF(100) + leaky readout(1), 100 Poisson inputs",
        T=T,
        batch=1,
        nest_version=str(out["nest_version"]),
        nest_simulate_s=t_nest,
        eproptax_float32_s=t32,
        eproptax_float64_s=t64,
        speedup=t_nest / t32,
        speedup_float64=t_nest / t64,
        required_speedup=10.0,
        relative_error_float64=errors,
        relative_error_float32=errors32,
        fixture_check=fixture,
        input_spikes=spikes,
    )
    _log(
        f"  NEST {row['nest_version']}: Simulate {1e3 * t_nest:.1f} ms for T={T}; eproptax eprop "
        f"{1e3 * t32:.2f} ms (float32), {1e3 * t64:.2f} ms (float64): x{t_nest / t32:.1f} (float32), "
        f"x{t_nest / t64:.1f} (float64); gradient relative error (float64) {errors}"
    )
    return row


# ----------------------------------------------------------------------------------------------------------
# braintrace
# ----------------------------------------------------------------------------------------------------------


def find_python(version: str):
    """An interpreter for ``version`` (``python3.12`` on PATH or under pyenv), or None."""
    found = shutil.which(f"python{version}")
    candidates = [found] if found else []
    root = os.path.expanduser("~/.pyenv/versions")
    if os.path.isdir(root):
        candidates += [
            os.path.join(root, v, "bin", f"python{version}") for v in sorted(os.listdir(root)) if v.startswith(version)
        ]
    for exe in candidates:
        try:
            if exe and subprocess.run([exe, "--version"], capture_output=True, timeout=10).returncode == 0:
                return exe
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def braintrace_peer(quick) -> list[dict]:
    python = find_python("3.12")
    if python is None:
        reason = "no Python 3.12 interpreter on this machine (braintrace is installed under Python 3.12)"
        _log(f"  braintrace: not measured: {reason}")
        return [dict(name="braintrace", speedup=None, reason=reason)]
    try:
        exe = ensure_env("braintrace", python, [f"braintrace=={BRAINTRACE}"])
    except Exception as e:  # noqa: BLE001
        _log(f"  braintrace: not measured: {e}")
        return [dict(name="braintrace", speedup=None, reason=f"install failed: {e}")]
    from _braintrace_peer import compare_braintrace  # noqa: E402 (imports eproptax problems for the same nets)

    return compare_braintrace(exe, run_side, quick=quick, log=_log)


def plot(rows, path):
    plt = pyplot()
    rows = [r for r in rows if r.get("speedup")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.5))
    labels = [f"{r['name']} ({r.get('network', '')[:40]})" for r in rows]
    ax.barh(labels, [r["speedup"] for r in rows])
    for r in rows:
        ax.axvline(r["required_speedup"], color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("eproptax speed-up over the peer (same network and rule)")
    save_figure(fig, path, title("eproptax against its peers"), fontsize=9)


def main(argv=None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--skip", nargs="+", default=[], choices=["nest", "braintrace"])
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = []
    if "nest" not in args.skip:
        _log("[NEST]")
        rows.append(nest_peer(args.quick))
    if "braintrace" not in args.skip:
        _log("[braintrace]")
        rows += braintrace_peer(args.quick)
    previous = os.path.join(results_dir(args.out), "peers.json")
    if args.skip and os.path.exists(previous):  # keep the skipped peers' last rows, with the run they came from
        with open(previous) as f:
            last = json.load(f)
        rows += [
            dict(r, measured_with=r.get("measured_with", last.get("info", {})))
            for r in last.get("peers", [])
            if r["name"].split()[0].lower() in args.skip
        ]
    path = save("peers", dict(peers=rows, seconds=time.perf_counter() - start), args.out)
    plot(rows, os.path.join(results_dir(args.out), "peers.png"))
    _log(f"wrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
