"""Multi-device data parallelism with jax.sharding: one training step on 1 and on 8 (CPU) devices.

The device count must be fixed before JAX initialises its backend, and the other test modules of this
pytest process have already done that, so the check runs in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. The script is the recipe of docs/scale.md: a
``Mesh`` over the batch axis, inputs and targets sharded with ``NamedSharding(mesh, P("batch"))``,
parameters and optimiser state replicated, one jitted step; the same code with a 1-device mesh is the
reference.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import eproptax as ep

assert jax.device_count() == 8, jax.devices()

def loss(out, target):
    return 0.5 * jnp.sum((out - target) ** 2)

def run(rule, dtype, devices):
    model = ep.cells.stack(ep.cells.lif(3, 5, dtype=dtype), ep.cells.leaky_readout(5, 2, dtype=dtype))
    params = model.init(jax.random.key(0))
    k1, k2 = jax.random.split(jax.random.key(1))
    inputs = 2.0 * jax.random.normal(k1, (8, 10, 3), dtype)
    targets = jax.random.normal(k2, (8, 10, 2), dtype)
    opt = optax.sgd(0.1)

    mesh = Mesh(np.array(devices), ("batch",))
    batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(opt.init(params), replicated)
    inputs, targets = jax.device_put(inputs, batch), jax.device_put(targets, batch)
    assert len(inputs.addressable_shards) == len(devices)

    grad_fn = {"eprop": ep.eprop, "bptt": ep.bptt}[rule](model, loss)

    @jax.jit
    def step(params, opt_state, inputs, targets):
        value, grads = grad_fn(params, inputs, targets)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    hlo = step.lower(params, opt_state, inputs, targets).compile().as_text()
    for _ in range(2):
        params, opt_state, value = step(params, opt_state, inputs, targets)
    replicated_out = all(leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(params))
    return jax.device_get(params), float(value), (replicated_out, "all-reduce" in hlo, "all-gather" in hlo)

def run_online(devices):
    # the online form: the per-example leaves of the state (carry, traces) sharded over the batch
    dtype = jnp.float64
    model = ep.cells.stack(ep.cells.lif(3, 5, dtype=dtype), ep.cells.leaky_readout(5, 2, dtype=dtype))
    params = model.init(jax.random.key(0))
    k1, k2 = jax.random.split(jax.random.key(1))
    inputs = 2.0 * jax.random.normal(k1, (8, 10, 3), dtype)
    targets = jax.random.normal(k2, (8, 10, 2), dtype)
    mesh = Mesh(np.array(devices), ("batch",))
    batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    rule = ep.online.eprop(model, loss)
    params = jax.device_put(params, replicated)
    state = rule.init(params, 8)
    state = jax.device_put(state, ep.online.batch_sharding(rule, state, mesh, "batch"))
    inputs, targets = jax.device_put((inputs, targets), batch)

    @jax.jit
    def chunk(params, state, inputs, targets):
        def body(state, xt):
            return rule.step(params, state, xt[0], xt[1])[0], None
        xs = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), (inputs, targets))
        state = jax.lax.scan(body, state, xs)[0]
        return state, rule.result(params, state)

    hlo = chunk.lower(params, state, inputs, targets).compile().as_text()
    state, result = chunk(params, state, inputs, targets)
    leaves = jax.tree_util.tree_leaves((state.carry, state.traces))
    sharded = all(not leaf.sharding.is_fully_replicated for leaf in leaves)
    return jax.device_get(result), (sharded, "all-reduce" in hlo, "all-gather" in hlo)


report = {"device_count": jax.device_count()}
one, _ = run_online(jax.devices()[:1])
eight, flags = run_online(jax.devices())
num = max(float(np.max(np.abs(a - b)))
          for a, b in zip(jax.tree_util.tree_leaves(eight), jax.tree_util.tree_leaves(one)))
den = max(float(np.max(np.abs(b))) for b in jax.tree_util.tree_leaves(one))
report["online_eprop_float64"] = {"rel_diff": num / den, "state_sharded": flags[0], "all_reduce": flags[1],
                                  "all_gather": flags[2]}
for rule in ("eprop", "bptt"):
    for dtype in (jnp.float32, jnp.float64):
        one, v1, _ = run(rule, dtype, jax.devices()[:1])
        eight, v8, rep = run(rule, dtype, jax.devices())
        num = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                  for a, b in zip(jax.tree_util.tree_leaves(eight), jax.tree_util.tree_leaves(one)))
        den = max(float(np.max(np.abs(np.asarray(b, np.float64)))) for b in jax.tree_util.tree_leaves(one))
        report[f"{rule}_{jnp.dtype(dtype).name}"] = {"rel_diff": num / den, "loss_1": v1, "loss_8": v8,
                                                     "replicated": rep[0], "all_reduce": rep[1],
                                                     "all_gather": rep[2]}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT ") :])


def test_eight_devices(report):
    assert report["device_count"] == 8


def test_online_state_sharded_over_batch_matches_one_device(report):
    r = report["online_eprop_float64"]
    assert r["rel_diff"] < 1e-13, r
    assert r["state_sharded"] and r["all_reduce"] and not r["all_gather"], r


@pytest.mark.parametrize("rule", ["eprop", "bptt"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-13)])
def test_data_parallel_step_matches_one_device(report, rule, dtype, tol):
    r = report[f"{rule}_{dtype}"]
    assert r["rel_diff"] < tol, r
    assert abs(r["loss_8"] - r["loss_1"]) <= tol * abs(r["loss_1"]), r
    assert r["replicated"], "parameters after the step must stay replicated over the mesh"
    # the batch really is split: each device runs its examples and the gradient is summed across devices
    # (an all-reduce), and the inputs are never gathered onto one device
    assert r["all_reduce"] and not r["all_gather"], r
