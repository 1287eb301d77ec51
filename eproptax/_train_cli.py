"""``eproptax train``: train a network on a task with any rule; write the history and figures."""

from __future__ import annotations

import ast
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import tasks as tasks_lib
from ._eprop import random_feedback
from ._registry import RULES, make_rule
from ._train import train


def _rule_flags() -> dict:
    """``{option name: [(rule, Option), ...]}`` for every rule-specific option of the registry (``--order``, ...)."""
    flags = {}
    for info in RULES.values():
        for option in info.options:
            flags.setdefault(option.name, []).append((info.name, option))
    return flags


def _rule_options(args) -> dict:
    """The rule-specific options of ``--rule``: those given on the command line, else the registry's defaults.

    Raises SystemExit for an option given that the rule does not take.
    """
    info = RULES[args.rule]
    for name in _rule_flags():
        if getattr(args, name) is not None and name not in info.defaults:
            takes = ", ".join(f"--{o.name}" for o in info.options) or "none"
            raise SystemExit(
                f"eproptax train: --{name} is not an option of --rule {args.rule} (its options: {takes}); "
                f"got --{name} {getattr(args, name)}."
            )
    return {
        name: default if getattr(args, name) is None else getattr(args, name) for name, default in info.defaults.items()
    }


def _task_options(pairs) -> dict:
    options = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise SystemExit(f"eproptax train: --task-option expects KEY=VALUE, got {pair!r}.")
        name, value = pair.split("=", 1)
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options


def run(args) -> int:
    """Runs ``eproptax train`` with the parsed ``args``: trains, prints the final metric, writes the outputs."""
    info = RULES[args.rule]
    _check_rule_args(args, info)
    options = _rule_options(args)
    task_options = _task_options(args.task_option)
    if args.task == "evidence" and "dt" not in task_options:
        task_options["dt"] = 10.0
        print("evidence accumulation on a 10 ms grid (225 steps); --task-option dt=1 gives the paper's 1 ms grid")
    task, test_task = _make_tasks(args, task_options)
    net_options = {k: v for k, v in (("cell", args.cell), ("n_rec", args.hidden), ("layers", args.layers)) if v}
    k_net, k_feedback, k_train, k_eval = jax.random.split(jax.random.key(args.seed), 4)
    model, params = task.network(k_net, **net_options)
    vars(args).update(options)  # the history records the values used
    rule = _make_rule(args, info, options, task, model, k_feedback)
    batch = args.batch if args.batch else (1 if args.task == "pattern" else 32)
    label = info.label(options)
    _print_setup(args, task, model, label, batch)
    start = time.perf_counter()
    params, history = train(
        rule,
        task,
        params,
        _optimizer(args),
        steps=args.steps,
        key=k_train,
        batch_size=batch,
        model=model,
        online_every=args.online_every,
        progress=not args.no_progress,
        desc=args.rule,
    )
    total = time.perf_counter() - start
    final = tasks_lib.evaluate(test_task, model, params, k_eval, 1 if args.task == "pattern" else args.eval_batch)
    print(
        f"final {task.metric_name} ({'test split' if args.task == 'digits' else 'fresh batch'}): "
        f"{final[task.metric_name]:.4f}, loss {final['loss']:.4f}; training took {total:.1f} s "
        f"({history['wall_s']:.1f} s in steps, compilation included)"
    )
    out = args.out or os.path.join("runs", f"{args.task}-{args.rule}")
    os.makedirs(out, exist_ok=True)
    _write_history(os.path.join(out, "history.json"), args, task, task_options, batch, history, final, total)
    figures = plot_run(out, task, model, params, history, k_eval, title=f"{args.task}, {label}")
    print(f"wrote {os.path.join(out, 'history.json')}" + "".join(f", {p}" for p in figures))
    return 0


def _check_rule_args(args, info) -> None:
    """Raises SystemExit for ``--online-every`` or ``--feedback random`` given to a rule that cannot take it."""
    if args.online_every is not None and not info.online_form:
        raise SystemExit(
            f"eproptax train: --rule {args.rule} has no online form (it needs the whole sequence); drop --online-every."
        )
    if args.feedback == "random" and not info.feedback:
        family = ", ".join(name for name, i in RULES.items() if i.feedback)
        raise SystemExit(
            f"eproptax train: --feedback random needs a rule that takes feedback ({family}), got --rule {args.rule}."
        )


def _make_tasks(args, task_options: dict):
    """``(task, test_task)`` of ``--task`` in the dtype of ``--float64`` (the test split for digits, else the task)."""
    dtype = jnp.float64 if args.float64 else jnp.float32
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    make_task = tasks_lib.TASKS[args.task]
    task = make_task(dtype=dtype, **task_options)
    test_task = make_task(dtype=dtype, **{**task_options, "split": "test"}) if args.task == "digits" else task
    return task, test_task


def _make_rule(args, info, options: dict, task, model, key):
    """The rule of ``--rule`` for ``model``, with its ``options``, the task's regulariser and the feedback asked."""
    dtype = jnp.float64 if args.float64 else jnp.float32
    n_rec = model.layers[-2].n_out
    feedback = "symmetric" if args.feedback == "symmetric" else random_feedback(key, n_rec, task.n_out, dtype)
    reg = None if args.no_reg else task.reg
    extra = {"feedback": feedback} if info.feedback else {}
    return make_rule(args.rule, model, task.loss, online=args.online_every is not None, reg=reg, **extra, **options)


def _print_setup(args, task, model, label: str, batch: int) -> None:
    """Prints the run's settings: task, network, rule, optimiser, batch, steps and seed."""
    online = args.online_every is not None
    print(
        f"eproptax train: task {args.task} ({task.time_steps} steps, {task.n_in} inputs), "
        f"{len(model.layers) - 1} x {type_name(model)}({model.layers[-2].n_out}), rule {label}"
        f"{f', online every {args.online_every} steps' if online else ''}, adam lr {args.lr} "
        f"({args.lr_schedule}){f', gradients clipped to norm {args.clip}' if args.clip else ''}, batch {batch}, "
        f"{args.steps} steps, seed {args.seed}"
    )


def _optimizer(args):
    """``optax.adam`` at ``--lr`` (constant or cosine-decayed), after clipping to ``--clip`` if given."""
    lr = optax.cosine_decay_schedule(args.lr, args.steps) if args.lr_schedule == "cosine" else args.lr
    optimizer = optax.adam(lr)
    if args.clip:
        optimizer = optax.chain(optax.clip_by_global_norm(args.clip), optimizer)
    return optimizer


def _write_history(path: str, args, task, task_options: dict, batch: int, history: dict, final: dict, total: float):
    """Writes ``history.json``: the settings, the loss and metric per step, the final evaluation and the device."""
    record = {
        "settings": {
            **vars(args),
            "func": None,
            "task_options": task_options,
            "batch": batch,
            "time_steps": task.time_steps,
            "n_in": task.n_in,
            "n_out": task.n_out,
        },
        "metric_name": task.metric_name,
        "loss": history["loss"].tolist(),
        "metric": history["metric"].tolist(),
        "final": final,
        "wall_s": total,
        "device": jax.devices()[0].platform,
        "jax": jax.__version__,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)


def type_name(model) -> str:
    """The first layer's kind, from its carry's type (``ALIFState`` -> ``ALIF``)."""
    first = model.layers[0] if model.layers else model
    carry = jax.eval_shape(lambda: first.init_carry(first.init(jax.random.key(0))))
    return type(carry).__name__.replace("State", "") or "cell"


def plot_run(out, task, model, params, history, key, *, title="") -> list[str]:
    """Writes ``learning_curves.png`` and ``raster.png`` (a spike raster with the readout and target) to ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install 'eproptax[plot]').")
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = np.arange(1, len(history["loss"]) + 1)
    window = max(1, min(50, len(steps) // 10))  # running mean over `window` steps on top of the raw values
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")
    for ax, values, label in [(axes[0], history["loss"], "loss"), (axes[1], history["metric"], task.metric_name)]:
        ax.plot(steps, values, lw=0.6, alpha=0.35, color="C0")
        ax.plot(steps[window - 1 :], smooth(values), lw=1.5, color="C0", label=f"running mean ({window} steps)")
        ax.set(xlabel="training step", ylabel=label)
    axes[0].set(yscale="log", title=title)
    axes[1].legend(fontsize=8)
    if task.metric_name != "accuracy":
        axes[1].set_yscale("log")
    fig.tight_layout()
    paths.append(os.path.join(out, "learning_curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    inputs, targets = task.sample(key, 1)
    outputs, layer_outputs = tasks_lib.forward(model, params, inputs)
    fig = raster_figure(
        task,
        model,
        inputs[0],
        layer_outputs[0][0],
        outputs[0],
        jax.tree_util.tree_map(lambda a: a[0], targets),
        title=title,
    )
    paths.append(os.path.join(out, "raster.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def raster_figure(task, model, inputs, activity, outputs, targets, *, title=""):
    """A figure of one sequence: input raster, recurrent raster (or activations), readout against target.

    Args:
      task: the :class:`~eproptax.tasks.Task`.
      model: the model (spiking layers get a raster, others a heat map).
      inputs: ``(T, n_in)``; activity: the first recurrent layer's outputs ``(T, n_rec)``;
      outputs: ``(T, n_out)``; targets: one example's targets (leaves ``(T, ...)``).
    """
    import matplotlib.pyplot as plt

    inputs, activity, outputs = np.asarray(inputs), np.asarray(activity), np.asarray(outputs)
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [1, 2, 1.3]})
    t_in, i_in = np.nonzero(inputs > 0) if np.all((inputs == 0) | (inputs == 1)) else (None, None)
    if t_in is not None:
        axes[0].scatter(t_in, i_in, s=1, marker="|", c="k")
    else:
        axes[0].imshow(inputs.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest")
    axes[0].set(ylabel="input", title=title)
    if tasks_lib.is_spiking(model):
        t_z, i_z = np.nonzero(activity > 0)
        axes[1].scatter(t_z, i_z, s=1, marker="|", c="k")
        axes[1].set(ylabel="recurrent neuron", ylim=(-0.5, activity.shape[1] - 0.5))
    else:
        axes[1].imshow(
            activity.T, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
        )
        axes[1].set(ylabel="recurrent unit")
    steps = np.arange(outputs.shape[0])
    mask = np.asarray(targets["mask"]) > 0
    if "label" in targets:
        probs = np.asarray(jax.nn.softmax(outputs, axis=-1))
        label = np.asarray(targets["label"])
        for k in range(outputs.shape[1]):
            (line,) = axes[2].plot(steps, probs[:, k], lw=1, label=f"p({k})" if outputs.shape[1] <= 4 else None)
            axes[2].plot(
                steps, np.where(mask, (label == k).astype(float), np.nan), lw=3, alpha=0.4, color=line.get_color()
            )
        axes[2].set(ylabel="readout (softmax)\nthick: target", ylim=(-0.05, 1.05))
        if outputs.shape[1] <= 4:
            axes[2].legend(loc="upper left", fontsize=7, ncol=outputs.shape[1])
    else:
        y = np.asarray(targets["y"])
        for k in range(outputs.shape[1]):
            (line,) = axes[2].plot(steps, outputs[:, k], lw=1)
            axes[2].plot(
                steps,
                np.where(mask, y[:, k], np.nan),
                lw=2,
                ls="--",
                alpha=0.6,
                color=line.get_color(),
                marker="o" if mask.sum() < 5 else None,
            )
        axes[2].set(ylabel="readout\ndashed: target")
    axes[2].set(xlabel="time step")
    fig.tight_layout()
    return fig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a network on a task with any rule; write history.json and figures",
        description="Train a network on a standard task with any rule of the library, print the "
        "final metric and write history.json, learning_curves.png and raster.png.",
    )
    p.add_argument("--task", choices=sorted(tasks_lib.TASKS), default="evidence")
    p.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="keyword of the task factory, repeatable (e.g. --task-option dt=10)",
    )
    p.add_argument("--rule", choices=list(RULES), default="eprop", help="a rule of ep.rules")
    for name, uses in _rule_flags().items():  # the rules' own options, from the registry
        first = uses[0][1]
        choices = list(dict.fromkeys(c for _, o in uses for c in (o.choices or ())))
        defaults = ", ".join(f"{rule} (default {o.default})" for rule, o in uses)
        p.add_argument(
            f"--{name}", type=first.type, choices=choices or None, default=None, help=f"{first.help}: {defaults}"
        )
    p.add_argument(
        "--feedback", choices=["symmetric", "random"], default="symmetric", help="learning signal of the e-prop family"
    )
    p.add_argument(
        "--online-every", type=int, default=None, metavar="K", help="use the online form and update every K time steps"
    )
    p.add_argument(
        "--cell",
        choices=["lif", "alif", "rnn", "lstm", "gru"],
        default=None,
        help="recurrent cell (default: the task's)",
    )
    p.add_argument("--hidden", type=int, default=None, help="neurons per recurrent layer (default: the task's)")
    p.add_argument("--layers", type=int, default=None, help="recurrent layers (default 1)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32, 1 for pattern)")
    p.add_argument("--eval-batch", type=int, default=512, help="batch size of the final evaluation")
    p.add_argument("--steps", type=int, default=300, help="training steps (batches)")
    p.add_argument("--lr", type=float, default=5e-3, help="optax.adam learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="constant, or cosine decay from --lr to 0 over the training steps",
    )
    p.add_argument(
        "--clip",
        type=float,
        default=None,
        metavar="NORM",
        help="clip the gradient's global norm (optax.clip_by_global_norm), e.g. for BPTT on long spiking sequences",
    )
    p.add_argument("--no-reg", action="store_true", help="train without the task's firing-rate regulariser")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true", help="train in float64")
    p.add_argument("--out", default=None, help="output folder (default runs/<task>-<rule>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
