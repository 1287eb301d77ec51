"""Writes the notebooks of this folder from the cells below (edit here, then run, then execute them).

    python notebooks/_make.py                 # rewrite the .ipynb files (unchanged code cells keep their outputs)
    python notebooks/_make.py --execute [NAME ...]  # execute them in full mode, saving the outputs

Every notebook reads ``EPROPTAX_QUICK=1`` from the environment to run in well under a minute
(``tests/test_notebooks.py`` does so); by default it runs in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import os
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = """\
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import eproptax as ep

QUICK = os.environ.get("EPROPTAX_QUICK", "0") == "1"  # a fast run for CI: small sizes, few steps
print(f"jax {jax.__version__} on {jax.devices()[0].platform}, quick mode: {QUICK}")"""

COSINE = """\
def flat(tree, batch_dims=0):
    \"\"\"A gradient pytree as one numpy vector (per entry of its ``batch_dims`` leading axes).\"\"\"
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    return np.concatenate([x.reshape(x.shape[:batch_dims] + (-1,)) for x in leaves], axis=-1)


def cosine(a, b, batch_dims=0):
    \"\"\"Cosine similarity of two gradients (whole parameter vectors), per entry of the leading axes.\"\"\"
    a, b = flat(a, batch_dims), flat(b, batch_dims)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))"""

NOTEBOOKS = {}

NOTEBOOKS["01_quick_start"] = [
    (
        "md",
        """\
# Quick start: one network, every rule, one optax loop

A recurrent network is written once as pure functions (a `Cell`); a learning rule turns it into
`grad_fn(params, inputs, targets) -> (loss, grads)`, used exactly like
`jax.value_and_grad(loss)(params, inputs, targets)`. Swapping `ep.eprop` for `ep.bptt` or `ep.rtrl` is a
one-line change. The task here is pattern generation (Bellec et al. 2020, Fig. 2): 100 LIF neurons turn one
frozen input spike pattern into a sum of sines.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
T = 200 if QUICK else 1000
N_REC = 30 if QUICK else 100
STEPS = 20 if QUICK else 300

task = ep.tasks.pattern_generation(time_steps=T, periods=(T, T / 2, T / 3, T / 5))
inputs, targets = task.sample(jax.random.key(1), 1)  # (batch, time, n_in) and {"y", "mask"}
print("inputs", inputs.shape, "targets", {k: v.shape for k, v in targets.items()})

# the network: LIF neurons and a leaky readout, as in the e-prop paper
model = ep.cells.stack(ep.cells.lif(task.n_in, N_REC, tau_mem=30.0),
                       ep.cells.leaky_readout(N_REC, 1, tau_out=30.0))
params = model.init(jax.random.key(0))


def loss(out_t, target_t):  # one example, one time step -> scalar
    return 0.5 * target_t["mask"] * jnp.sum((out_t - target_t["y"]) ** 2)""",
    ),
    (
        "md",
        """\
## Swap the rule in one line

`ep.bptt` is the exact gradient (backpropagation through time). `ep.eprop` computes its estimate forward in
time, with eligibility traces that do not grow with the sequence length.""",
    ),
    ("code", COSINE),
    (
        "code",
        """\
grad_fn = ep.eprop(model, loss)  # swap for ep.bptt(model, loss) to get the exact gradient
value, grads = jax.jit(grad_fn)(params, inputs, targets)
exact_value, exact = jax.jit(ep.bptt(model, loss))(params, inputs, targets)
print(f"loss {value:.5f} (bptt {exact_value:.5f}); grads mirror params: "
      f"{jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)}; "
      f"readout gradient identical: {np.allclose(flat(grads[1]), flat(exact[1]))}")""",
    ),
    (
        "md",
        """\
How close is e-prop to the exact gradient, and how does it change with the length of the sequence? The
gradient of the loss on the first `n` steps is the gradient with the later steps masked out, so one
compiled program (a `jax.vmap` over masks) gives every length:""",
    ),
    (
        "code",
        """\
lengths = [n for n in [25, 50, 100, 200, 500, 1000] if n <= T]
masks = jnp.stack([(jnp.arange(T) < n).astype(jnp.float32)[None] / n for n in lengths])
per_length = lambda rule: jax.jit(jax.vmap(lambda m: rule(params, inputs, {**targets, "mask": m})[1]))(masks)
g_eprop, g_bptt = per_length(ep.eprop(model, loss)), per_length(ep.bptt(model, loss))
print("    n  cosine(recurrent layer)  |grad| e-prop  |grad| BPTT")
for i, n in enumerate(lengths):
    pick = lambda g: jax.tree_util.tree_map(lambda a: a[i], g[0])
    print(f"{n:5d}  {cosine(pick(g_eprop), pick(g_bptt)):23.3f}  {np.linalg.norm(flat(pick(g_eprop))):13.3g}"
          f"  {np.linalg.norm(flat(pick(g_bptt))):11.3g}")""",
    ),
    (
        "md",
        """\
Over a few hundred steps BPTT's gradient of this spiking network grows by orders of magnitude: it is the
exact gradient of the surrogate model (RTRL below agrees with it), dominated by a few paths whose
pseudo-derivatives multiply through the recurrent weights. e-prop drops exactly those paths (the explicit
recurrence), so its estimate stays bounded, and it trains this task well (below). In our runs BPTT, even
with the gradient clipped (`optax.clip_by_global_norm`), did not train this 1000-step task (its loss became
NaN); notebook 03 compares them on shorter sequences.""",
    ),
    (
        "md",
        """\
RTRL is exact too, forward in time, but its influence matrix costs `|state| x |params|` per example: use it
on small networks. On 8 neurons and 100 steps it matches BPTT to rounding error:""",
    ),
    (
        "code",
        """\
small = ep.cells.stack(ep.cells.lif(task.n_in, 8, tau_mem=30.0), ep.cells.leaky_readout(8, 1, tau_out=30.0))
p_small = jax.tree_util.tree_map(lambda w: 3.0 * w, small.init(jax.random.key(2)))
x, y = inputs[:, :100], jax.tree_util.tree_map(lambda a: a[:, :100], targets)
_, reference = jax.jit(ep.bptt(small, loss))(p_small, x, y)
for name, rule in [("rtrl", ep.rtrl), ("eprop", ep.eprop), ("eprop_m(order=1)", lambda m, l: ep.eprop_m(m, l, 1))]:
    _, g = jax.jit(rule(small, loss))(p_small, x, y)
    diff = np.max(np.abs(flat(g) - flat(reference)))
    print(f"{name:18s} cosine with bptt {cosine(g, reference):.6f}, max abs difference {diff:.2e}")""",
    ),
    ("md", "## One optax loop\n\nThe training step is one `jax.jit` region; the rule is a plain function inside it."),
    (
        "code",
        """\
optimizer = optax.adam(3e-3)
opt_state = optimizer.init(params)


@jax.jit
def train_step(params, opt_state):
    value, grads = grad_fn(params, inputs, targets)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


start = time.perf_counter()
losses = []
for step in range(STEPS):
    params, opt_state, value = train_step(params, opt_state)
    losses.append(float(value))
print(f"{STEPS} e-prop steps in {time.perf_counter() - start:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}")

outputs, (spikes, _) = ep.tasks.forward(model, params, inputs)
print(f"NMSE after training: {float(task.metric(outputs, targets)):.3f}")
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
axes[0].plot(losses)
axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="e-prop training")
t_z, i_z = np.nonzero(np.asarray(spikes[0]))
axes[1].scatter(t_z, i_z, s=1, marker="|", c="k")
axes[1].set(xlabel="time step", ylabel="neuron", title="recurrent spikes")
axes[2].plot(targets["y"][0, :, 0], "k--", label="target")
axes[2].plot(outputs[0, :, 0], label="readout")
axes[2].set(xlabel="time step", title="readout vs target")
axes[2].legend()
plt.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """\
## The same loop in one call, per sequence or online

`ep.train` is that loop (a fresh batch from the task every step, one compiled step, a progress bar on
stderr) and returns a history of loss and metric. `task.network` builds the network the task is usually
solved with, and `task.reg` its firing-rate regulariser. With an online rule (`ep.online.eprop`) and
`online_every=k`, the weights change every `k` time steps, while the sequence runs.""",
    ),
    (
        "code",
        """\
net, p0 = task.network(jax.random.key(0), n_rec=N_REC)
runs = {
    "e-prop, per sequence": (ep.eprop(net, task.loss, reg=task.reg), None),
    f"e-prop, online every {T // 10} steps": (ep.online.eprop(net, task.loss, reg=task.reg), T // 10),
}
histories = {}
for name, (rule, every) in runs.items():
    _, histories[name] = ep.train(rule, task, p0, optax.adam(3e-3), steps=STEPS, key=jax.random.key(1),
                                  batch_size=1, model=net, online_every=every, desc=name)
for name, h in histories.items():
    plt.plot(h["metric"], label=f"{name}: {h['metric'][-1]:.3f} ({h['wall_s']:.0f} s)")
plt.gca().set(xlabel="step", ylabel="NMSE", yscale="log", title="pattern generation")
plt.legend()
plt.show()""",
    ),
]

NOTEBOOKS["02_rule_family"] = [
    (
        "md",
        """\
# The rule family: how close each rule's gradient is to BPTT

e-prop keeps the *implicit* recurrence (each neuron's own dynamics) and drops the *explicit* one (paths
through other neurons' previous outputs). m-order e-prop (Martín-Sánchez et al. 2022) puts back the paths
with at most `m` explicit edges; RTRL keeps them all. Deep e-prop (Millidge 2025) carries the traces across
layers. Here we measure the cosine similarity of each rule's gradient with BPTT's, averaged over random
networks, against the sequence length `T`, the order `m` and the depth treatment.

Every measurement is one compiled program: the random networks are a `jax.vmap` over parameters, and the
sequence lengths a `jax.vmap` over loss masks (the gradient of the loss on the first `T` steps is the
gradient with the later steps masked out).""",
    ),
    ("code", SETUP),
    (
        "code",
        COSINE
        + """


def mse(out_t, target_t):
    return 0.5 * target_t["mask"] * jnp.sum((out_t - target_t["y"]) ** 2)


def spiking_net(key, n_in, n_rec, n_out, layers=1):
    \"\"\"LIF layers with strong recurrent weights (so the explicit recurrence matters) and a leaky readout.\"\"\"
    model = ep.cells.stack(*[ep.cells.lif(n_in if i == 0 else n_rec, n_rec) for i in range(layers)],
                           ep.cells.leaky_readout(n_rec, n_out))
    params = model.init(key)
    return model, tuple({**p, "w_in": 6.0 * p["w_in"], "w_rec": 3.0 * p["w_rec"]} if "w_rec" in p else p
                        for p in params)


def problem(key, n_in, time_steps):
    k_in, k_phase = jax.random.split(key)
    inputs = (jax.random.uniform(k_in, (4, time_steps, n_in)) < 0.1).astype(jnp.float32)
    t = jnp.arange(time_steps, dtype=jnp.float32)
    phase = 2 * jnp.pi * jax.random.uniform(k_phase, (4, 1, 2))
    y = jnp.sin(2 * jnp.pi * t[None, :, None] / 25.0 + phase)
    return inputs, {"y": y, "mask": jnp.ones((4, time_steps))}""",
    ),
    ("md", "## Alignment against the sequence length"),
    (
        "code",
        """\
N_IN, N_REC = 10, 16
T_MAX = 40 if QUICK else 160
LENGTHS = [5, 10, 20, 40] if QUICK else [5, 10, 20, 40, 80, 160]
K = 2 if QUICK else 6  # random networks

model, _ = spiking_net(jax.random.key(0), N_IN, N_REC, 2)
params = jax.vmap(lambda k: spiking_net(k, N_IN, N_REC, 2)[1])(jax.random.split(jax.random.key(1), K))
inputs, targets = problem(jax.random.key(2), N_IN, T_MAX)
masks = jnp.stack([jnp.broadcast_to(jnp.arange(T_MAX) < n, (4, T_MAX)).astype(jnp.float32) for n in LENGTHS])

B = ep.random_feedback(jax.random.key(3), N_REC, 2)
rules = {"BPTT": ep.bptt(model, mse), "e-prop": ep.eprop(model, mse), "eprop_m(1)": ep.eprop_m(model, mse, 1)}
if not QUICK:
    rules["e-prop, random B"] = ep.eprop(model, mse, feedback=B)
    rules["eprop_m(2)"] = ep.eprop_m(model, mse, 2)
    rules["RTRL"] = ep.rtrl(model, mse)


def grads_for(rule):
    \"\"\"grads[length, network]: one program for every prefix length and every network.\"\"\"
    per_mask = lambda p, m: rule(p, inputs, {**targets, "mask": m})[1]
    return jax.jit(jax.vmap(jax.vmap(per_mask, in_axes=(0, None)), in_axes=(None, 0)))(params, masks)


start = time.perf_counter()
grads = {name: grads_for(rule) for name, rule in rules.items()}
print(f"{len(rules)} rules x {len(LENGTHS)} lengths x {K} networks in {time.perf_counter() - start:.1f} s")
# the readout's gradient is exact for every rule: compare the recurrent layer's (w_in, w_rec)
alignment = {name: cosine(g[0], grads["BPTT"][0], batch_dims=2).mean(axis=1)
             for name, g in grads.items() if name != "BPTT"}
for name, values in alignment.items():
    plt.plot(LENGTHS, values, "o-", label=name)
    print(f"{name:18s}", " ".join(f"{v:.3f}" for v in values))
plt.gca().set(xscale="log", xlabel="sequence length T", ylabel="cosine with BPTT\\n(recurrent layer)",
              title="alignment against T")
plt.legend()
plt.show()""",
    ),
    (
        "md",
        """\
## Alignment against the order m

Each order adds one level of dense traces (like RTRL's influence matrix); `order >= T - 1` is the exact
gradient (the test suite checks it).""",
    ),
    (
        "code",
        """\
T_ORDER = 30
ORDERS = [1] if QUICK else [0, 1, 2, 3, 4, 6]
x, y = inputs[:, :T_ORDER], jax.tree_util.tree_map(lambda a: a[:, :T_ORDER], targets)
bptt_grads = jax.jit(jax.vmap(lambda p: ep.bptt(model, mse)(p, x, y)[1]))(params)
by_order = []
for order in ORDERS:
    g = jax.jit(jax.vmap(lambda p: ep.eprop_m(model, mse, order)(p, x, y)[1]))(params)
    by_order.append(cosine(g[0], bptt_grads[0], batch_dims=1).mean())
    print(f"order {order}: cosine with BPTT (recurrent layer) {by_order[-1]:.4f}")
plt.plot(ORDERS, by_order, "o-")
plt.gca().set(xlabel="order m", ylabel="cosine with BPTT\\n(recurrent layer)", title=f"m-order e-prop, T = {T_ORDER}")
plt.show()""",
    ),
    (
        "md",
        """\
## Alignment against depth

A stack of three LIF layers: `eprop` gives each layer its own traces and passes the learning signal down
through the layers above at the same step; `deep_eprop(depth="full")` also carries each layer's traces
through the layers above it; `order=1` puts back one explicit edge within each layer.""",
    ),
    (
        "code",
        """\
LAYERS, N_DEEP, T_DEEP = (2, 8, 10) if QUICK else (3, 12, 60)
deep, _ = spiking_net(jax.random.key(0), N_IN, N_DEEP, 2, layers=LAYERS)
deep_params = jax.vmap(lambda k: spiking_net(k, N_IN, N_DEEP, 2, layers=LAYERS)[1])(
    jax.random.split(jax.random.key(4), K))
x, y = inputs[:, :T_DEEP], jax.tree_util.tree_map(lambda a: a[:, :T_DEEP], targets)
deep_rules = {
    "e-prop (each layer alone)": ep.eprop(deep, mse),
    "deep e-prop, full": ep.deep_eprop(deep, mse, depth="full"),
}
if not QUICK:
    deep_rules["deep e-prop, full, order 1"] = ep.deep_eprop(deep, mse, depth="full", order=1)
reference = jax.jit(jax.vmap(lambda p: ep.bptt(deep, mse)(p, x, y)[1]))(deep_params)
width = 0.8 / len(deep_rules)
for j, (name, rule) in enumerate(deep_rules.items()):
    g = jax.jit(jax.vmap(lambda p: rule(p, x, y)[1]))(deep_params)
    per_layer = [cosine(g[l], reference[l], batch_dims=1).mean() for l in range(LAYERS)]
    print(f"{name:28s}", " ".join(f"layer {l + 1}: {v:.3f}" for l, v in enumerate(per_layer)))
    plt.bar(np.arange(LAYERS) + j * width, per_layer, width, label=name)
plt.xticks(np.arange(LAYERS) + width, [f"layer {l + 1}" for l in range(LAYERS)])
plt.gca().set(ylabel="cosine with BPTT", title=f"{LAYERS} LIF layers, T = {T_DEEP}")
plt.legend(fontsize=8)
plt.show()""",
    ),
]

NOTEBOOKS["03_deep_eprop"] = [
    (
        "md",
        """\
# Deep e-prop: training a multi-layer spiking network online

With several recurrent layers, `ep.eprop` gives each layer its own eligibility traces and a learning signal
passed down through the layers above *at the same step*; `ep.deep_eprop` (Millidge 2025) also propagates
each layer's traces up through the layers above it (`E^{l,p} = D^l E^{l,p} + F^l E^{l-1,p}`), so a lower
layer's weights see how they move the top layer over time. Both stay online and their memory does not grow
with `T`; BPTT is the reference. The task is pattern generation with two LIF layers.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
T = 100 if QUICK else 200  # BPTT's gradient explodes on much longer spiking sequences (notebook 01)
N_REC = 16 if QUICK else 32
STEPS = 15 if QUICK else 300
task = ep.tasks.pattern_generation(n_in=50, time_steps=T, periods=(T, T / 2, T / 3, T / 5))
# moderate recurrent weights: deep e-prop drops the within-layer recurrence (like e-prop) and keeps the
# paths across layers, so it is exact when rec_scale = 0 and approximate as the recurrence grows
model, params = task.network(jax.random.key(0), n_rec=N_REC, layers=2, input_scale=2.0, rec_scale=0.3)
for i, p in enumerate(params):
    print(f"layer {i + 1}:", {name: w.shape for name, w in p.items()})""",
    ),
    (
        "code",
        COSINE
        + """


inputs, targets = task.sample(jax.random.key(1), 1)
x, y = inputs, targets
rules = {
    "BPTT": lambda m, l: ep.bptt(m, l),
    "e-prop (spatial)": lambda m, l: ep.eprop(m, l),
    "deep e-prop (full)": lambda m, l: ep.deep_eprop(m, l, depth="full"),
}
_, reference = jax.jit(rules["BPTT"](model, task.loss))(params, x, y)
for name in ["e-prop (spatial)", "deep e-prop (full)"]:
    _, g = jax.jit(rules[name](model, task.loss))(params, x, y)
    print(f"{name:20s} cosine with BPTT per layer:",
          ", ".join(f"{cosine(g[l], reference[l]):.3f}" for l in range(3)))""",
    ),
    (
        "code",
        """\
trained, histories = {}, {}
for name, make in rules.items():
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))  # clipping tames BPTT's gradient
    trained[name], histories[name] = ep.train(make(model, task.loss), task, params, optimizer, steps=STEPS,
                                              key=jax.random.key(2), batch_size=1, model=model, desc=name)
for name, h in histories.items():
    plt.plot(h["metric"], label=f"{name}: final {h['metric'][-1]:.3f} ({h['wall_s']:.0f} s)")
plt.gca().set(xlabel="training step", ylabel="NMSE", yscale="log", title="2 LIF layers, pattern generation")
plt.legend()
plt.show()""",
    ),
    (
        "md",
        """\
BPTT computes the exact gradient of this surrogate model, but over these 200 steps it is dominated by a few
exploding paths through the recurrent weights (notebook 01 measures its norm against `T`), and even with the
gradient clipped its steps did not train the network in our runs. e-prop and deep e-prop drop the
within-layer explicit recurrence, which is where those paths run, and both learn the pattern; deep e-prop
also keeps the paths from the first layer's weights through the second layer over time.""",
    ),
    (
        "code",
        """\
outputs, layer_outputs = ep.tasks.forward(model, trained["deep e-prop (full)"], inputs)
fig, axes = plt.subplots(3, 1, figsize=(9, 6), sharex=True)
for l in range(2):
    t_z, i_z = np.nonzero(np.asarray(layer_outputs[l][0]))
    axes[l].scatter(t_z, i_z, s=1, marker="|", c="k")
    axes[l].set(ylabel=f"layer {l + 1}")
axes[2].plot(targets["y"][0, :, 0], "k--", label="target")
axes[2].plot(outputs[0, :, 0], label="readout")
axes[2].set(xlabel="time step")
axes[2].legend()
plt.suptitle("after deep e-prop training")
plt.show()""",
    ),
]

NOTEBOOKS["04_evidence_accumulation"] = [
    (
        "md",
        """\
# Evidence accumulation with e-prop and BPTT

The task of Bellec et al. 2020 (Fig. 3): seven cues, each on the left or the right, then a delay of about a
second, then the network must report the side with more cues. 40 input neurons in four populations (left,
right, recall, background), 100 recurrent neurons (50 LIF, 50 adaptive: the adaptation holds the count over
the delay) and two leaky readouts compared with a softmax during the recall window. We use a 10 ms time
step (225 steps per trial) so that training runs on a laptop CPU.

This notebook trains for a few minutes; `docs/tasks.md` lists longer runs (`eproptax train` commands) and
the accuracy they reach.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
DT = 25.0 if QUICK else 10.0
N_REC = 20 if QUICK else 100
STEPS = 4 if QUICK else 600
BATCH = 8 if QUICK else 32
task = ep.tasks.evidence_accumulation(dt=DT)
model, params = task.network(jax.random.key(0), n_rec=N_REC)
print(f"{task.time_steps} steps per trial, {task.n_in} inputs, {N_REC} recurrent neurons")""",
    ),
    (
        "code",
        """\
def show(params, title):
    inputs, targets = task.sample(jax.random.key(7), 1)
    outputs, (spikes, _) = ep.tasks.forward(model, params, inputs)
    fig, axes = plt.subplots(3, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [1, 2, 1]})
    for ax, z in zip(axes[:2], [inputs[0], spikes[0]]):
        t_z, i_z = np.nonzero(np.asarray(z))
        ax.scatter(t_z, i_z, s=1, marker="|", c="k")
    axes[0].set(ylabel="input\\n(L, R, recall, noise)", title=title)
    axes[1].set(ylabel="recurrent\\n(LIF, then ALIF)")
    probs = jax.nn.softmax(outputs[0], axis=-1)
    label = int(targets["label"][0, -1])
    recall = np.asarray(targets["mask"][0]) > 0
    for k, side in enumerate(["left", "right"]):
        axes[2].plot(probs[:, k], label=f"p({side})")
    axes[2].fill_between(np.arange(task.time_steps), 0, recall, color="grey", alpha=0.2, label="recall")
    axes[2].set(xlabel="time step", ylabel="readout", title=f"answer: {['left', 'right'][label]}")
    axes[2].legend(loc="upper left", fontsize=8)
    plt.tight_layout()
    plt.show()


show(params, "before training")""",
    ),
    (
        "code",
        """\
trained, histories = {}, {}
for name, rule in [("e-prop", ep.eprop), ("BPTT", ep.bptt)]:
    optimizer = optax.adam(optax.cosine_decay_schedule(5e-3, STEPS))  # the learning rate decays to 0
    trained[name], histories[name] = ep.train(
        rule(model, task.loss, reg=task.reg), task, params, optimizer, steps=STEPS,
        key=jax.random.key(1), batch_size=BATCH, model=model, desc=name)
    test = ep.tasks.evaluate(task, model, trained[name], jax.random.key(99), 256)
    print(f"{name}: test accuracy {test['accuracy']:.3f} after {STEPS} steps "
          f"({histories[name]['wall_s']:.0f} s)")""",
    ),
    (
        "code",
        """\
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
smooth = lambda v: np.convolve(v, np.ones(min(20, len(v))) / min(20, len(v)), mode="valid")
for name, h in histories.items():
    axes[0].plot(smooth(h["loss"]), label=name)
    axes[1].plot(smooth(h["metric"]), label=name)
axes[0].set(xlabel="training step", ylabel="loss (running mean)")
axes[1].set(xlabel="training step", ylabel="accuracy (running mean)")
axes[1].legend()
plt.tight_layout()
plt.show()
show(trained["e-prop"], "after e-prop training")""",
    ),
]

NOTEBOOKS["05_hyperparameter_sweeps"] = [
    (
        "md",
        """\
# Hyperparameter sweeps with `jax.vmap`: many networks in one compiled program

The rules are pure functions and the cells take traced hyperparameters, so a whole training run is a
function of the learning rate, the membrane time constant or the seed of a random feedback matrix, and
`jax.vmap` trains a grid of networks at once. The cell is built *inside* the vmapped function; the
learning rate goes through `optax.inject_hyperparams`.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
T = 100 if QUICK else 300
N_REC = 16 if QUICK else 50
STEPS = 10 if QUICK else 200
task = ep.tasks.pattern_generation(n_in=50, time_steps=T, periods=(T, T / 2, T / 3, T / 5))
inputs, targets = task.sample(jax.random.key(0), 1)


def train_one(learning_rate, tau_mem, feedback_key, *, random_feedback=False):
    \"\"\"One whole e-prop training run; every argument may be traced (vmapped).\"\"\"
    model, params = task.network(jax.random.key(0), n_rec=N_REC, tau_mem=tau_mem)
    feedback = ep.random_feedback(feedback_key, N_REC, 1) if random_feedback else "symmetric"
    grad_fn = ep.eprop(model, task.loss, feedback=feedback)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = grad_fn(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=STEPS)
    outputs, _ = ep.tasks.forward(model, params, inputs)
    return losses, task.metric(outputs, targets)""",
    ),
    ("md", "## Learning rate x membrane time constant"),
    (
        "code",
        """\
LRS = jnp.array([1e-3, 1e-2] if QUICK else [3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
TAUS = jnp.array([10.0, 30.0] if QUICK else [5.0, 10.0, 20.0, 30.0, 50.0])
lr_grid, tau_grid = [a.ravel() for a in jnp.meshgrid(LRS, TAUS, indexing="ij")]
sweep = jax.jit(jax.vmap(train_one, in_axes=(0, 0, None)))
start = time.perf_counter()
losses, final_nmse = jax.block_until_ready(sweep(lr_grid, tau_grid, jax.random.key(0)))
print(f"{lr_grid.size} networks x {STEPS} steps in one program: {time.perf_counter() - start:.1f} s "
      "(compilation included)")
grid = np.asarray(final_nmse).reshape(len(LRS), len(TAUS))
best = np.unravel_index(np.argmin(grid), grid.shape)
print(f"best: learning rate {float(LRS[best[0]]):g}, tau_mem {float(TAUS[best[1]]):g}, NMSE {grid[best]:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
image = axes[0].imshow(np.log10(grid), origin="lower", cmap="viridis_r")
axes[0].set(xticks=range(len(TAUS)), xticklabels=[f"{t:g}" for t in TAUS], xlabel="tau_mem",
            yticks=range(len(LRS)), yticklabels=[f"{l:g}" for l in LRS], ylabel="learning rate",
            title="final NMSE (log10)")
plt.colorbar(image, ax=axes[0])
for i in range(len(LRS)):
    axes[1].plot(np.asarray(losses).reshape(len(LRS), len(TAUS), STEPS)[i, best[1]], label=f"lr {float(LRS[i]):g}")
axes[1].set(xlabel="step", ylabel="loss", yscale="log", title=f"tau_mem = {float(TAUS[best[1]]):g}")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """\
## Random feedback: a sweep over seeds

With `feedback=B`, e-prop's learning signal goes through a fixed random matrix instead of the readout
weights (random e-prop). `B` is an argument, so its seed can be vmapped too.""",
    ),
    (
        "code",
        """\
SEEDS = 2 if QUICK else 8
best_lr, best_tau = LRS[best[0]], TAUS[best[1]]
random_sweep = jax.jit(jax.vmap(lambda k: train_one(best_lr, best_tau, k, random_feedback=True)))
_, random_nmse = random_sweep(jax.random.split(jax.random.key(1), SEEDS))
print(f"symmetric feedback: NMSE {grid[best]:.3f}; random feedback over {SEEDS} seeds: "
      f"{float(jnp.mean(random_nmse)):.3f} +- {float(jnp.std(random_nmse)):.3f}")""",
    ),
]

NOTEBOOKS["06_sparse_dale_deep_r"] = [
    (
        "md",
        """\
# Sparse excitatory and inhibitory networks, rewired with Deep R

Bellec et al. (2020) trained their spiking networks sparse, with Deep R rewiring (Bellec, Kappel, Maass and
Legenstein 2018). Here a LIF network with a fixed number of presynaptic partners per neuron (fixed fan-in)
and Dale's law (80% excitatory neurons, 20% inhibitory) learns the pattern-generation task of notebook 01
with e-prop, once with its connectivity frozen and once rewired by `ep.deep_r` after every Adam update.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
T = 200 if QUICK else 1000
N_REC = 40 if QUICK else 200
FAN_IN = N_REC // 10  # 10% of the recurrent layer, per neuron
STEPS = 20 if QUICK else 300

task = ep.tasks.pattern_generation(time_steps=T, periods=(T, T / 2, T / 3, T / 5))
inputs, targets = task.sample(jax.random.key(1), 1)
k_in, k_rec = jax.random.split(jax.random.key(2))
masks = (ep.cells.fan_in_mask(k_in, (N_REC, task.n_in), task.n_in // 5),  # (post, pre): 20% of the inputs
         ep.cells.fan_in_mask(k_rec, (N_REC, N_REC), FAN_IN, autapses=False))
dale = ep.cells.dale_signs(N_REC, excitatory=0.8)
readout = ep.cells.leaky_readout(N_REC, 1, tau_out=30.0)


def network(masks):
    \"\"\"The sparse E/I network: built inside the jitted step, so the masks are traced values.\"\"\"
    lif = ep.cells.lif(task.n_in, N_REC, tau_mem=30.0, mask_in=masks[0], mask_rec=masks[1], dale=dale)
    return ep.cells.stack(lif, readout)


def loss(out_t, target_t):
    return 0.5 * target_t["mask"] * jnp.sum((out_t - target_t["y"]) ** 2)


params0 = network(masks).init(jax.random.key(0))
signs_in = jnp.where(params0[0]["w_in"] >= 0, 1.0, -1.0)  # each input synapse keeps the sign it was drawn with
print(f"{int(masks[1].sum())} recurrent synapses of {N_REC * N_REC} ({masks[1].mean():.0%}), "
      f"{int(masks[0].sum())} input synapses; "
      f"{int((dale > 0).sum())} excitatory, {int((dale < 0).sum())} inhibitory neurons")""",
    ),
    (
        "md",
        """\
## One training step, with and without rewiring

`ep.deep_r` removes every synapse whose weight crossed zero (its sign would flip) and draws, for each neuron,
as many new ones among its absent synapses, so every neuron keeps its fan-in. The recurrent layer's
parameter holds magnitudes (the cell's weight is `dale * |w|`), so its signs are `1`; the input synapses
keep their own. The L1 term pushes weak synapses out, as in the paper.""",
    ),
    (
        "code",
        """\
optimizer = optax.adam(3e-3)


def train_step(params, opt_state, masks, key, rewire):
    value, grads = ep.eprop(network(masks), loss)(params, inputs, targets)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if rewire:
        (w_in, w_rec), masks = ep.deep_r(key, (params[0]["w_in"], params[0]["w_rec"]), masks, (signs_in, 1.0),
                                         learning_rate=3e-3, l1=1e-2, autapses=(True, False))
        params = ({**params[0], "w_in": w_in, "w_rec": w_rec}, params[1])
    return params, opt_state, masks, value


train_step = jax.jit(train_step, static_argnames="rewire")  # one program per choice, whatever the masks
runs = {}
for rewire in (False, True):
    params, opt_state, m, history, rewired = params0, optimizer.init(params0), masks, [], 0
    start = time.perf_counter()
    for step in range(STEPS):
        params, opt_state, new_m, value = train_step(params, opt_state, m, jax.random.key(step), rewire)
        rewired += int(jnp.sum(new_m[1] & ~m[1]))
        m = new_m
        history.append(float(value))
    name = "Deep R" if rewire else "fixed connectivity"
    runs[name] = (params, m, history)
    print(f"{name}: loss {history[0]:.4f} -> {history[-1]:.4f} in {time.perf_counter() - start:.1f} s, "
          f"{rewired} recurrent synapses rewired, {train_step._cache_size()} compiled step(s) so far")""",
    ),
    (
        "md",
        """\
## What the rewired network keeps

Every neuron still has `FAN_IN` recurrent partners, every excitatory neuron's outgoing weights are
positive and every inhibitory one's negative, and an absent synapse has weight zero.""",
    ),
    (
        "code",
        """\
params, m, _ = runs["Deep R"]
w_rec = dale[None, :] * jnp.abs(params[0]["w_rec"]) * m[1]  # the weights the cell uses, (post, pre)
print("fan-in per neuron:", sorted(set(np.asarray(m[1].sum(1)).tolist())))
print("excitatory columns >= 0:", bool(jnp.all(w_rec[:, dale > 0] >= 0)),
      "| inhibitory columns <= 0:", bool(jnp.all(w_rec[:, dale < 0] <= 0)),
      "| absent synapses zero:", bool(jnp.all(params[0]["w_rec"][~m[1]] == 0)))

fig, axes = plt.subplots(1, 3, figsize=(13, 3))
for name, (_, _, history) in runs.items():
    axes[0].plot(history, label=name)
axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="e-prop on a sparse E/I network")
axes[0].legend()
axes[1].imshow(np.asarray(w_rec), cmap="bwr", vmin=-float(jnp.abs(w_rec).max()), vmax=float(jnp.abs(w_rec).max()))
axes[1].set(xlabel="presynaptic", ylabel="postsynaptic", title="recurrent weights after Deep R")
outputs, _ = ep.tasks.forward(network(m), params, inputs)
axes[2].plot(targets["y"][0, :, 0], "k--", label="target")
axes[2].plot(outputs[0, :, 0], label="readout")
axes[2].set(xlabel="time step", title="readout vs target (Deep R)")
axes[2].legend()
plt.tight_layout()
plt.show()""",
    ),
]


def build(name: str) -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in NOTEBOOKS[name]]
    for i, cell in enumerate(notebook.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rewriting a notebook changes only what changed
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def carry_outputs(notebook: nbformat.NotebookNode, path: str) -> None:
    """Copies the outputs of the code cells whose source has not changed from the notebook at ``path``."""
    if not os.path.exists(path):
        return
    old_notebook = nbformat.read(path, as_version=4)
    notebook.metadata = old_notebook.metadata
    previous = {cell.source: cell for cell in old_notebook.cells if cell.cell_type == "code"}
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.source in previous:
            old = previous[cell.source]
            cell.outputs, cell.execution_count, cell.metadata = old.outputs, old.execution_count, old.metadata


def main(argv) -> None:
    names = [a for a in argv if not a.startswith("--")] or list(NOTEBOOKS)
    for name in names:
        notebook = build(name)
        path = os.path.join(HERE, name + ".ipynb")
        if "--execute" not in argv:
            carry_outputs(notebook, path)  # rewriting the text keeps the results of unchanged code cells
        else:
            from nbclient import NotebookClient

            start = time.perf_counter()
            client = NotebookClient(
                notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": HERE}}
            )
            client.execute()
            print(f"{name}: executed in {time.perf_counter() - start:.0f} s")
        nbformat.write(notebook, path)
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1:])
