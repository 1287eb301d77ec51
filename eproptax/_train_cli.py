"""``eproptax train``: train a network on a task with any rule; write the history and figures.

Every option is checked before any training (see :mod:`eproptax._cli`): numbers while parsing; then the
options against each other (an option of another rule, ``--online-every`` for a rule without an online form,
``--feedback`` for a rule that takes none), each ``--task-option`` against the task factory's signature (its
keywords, and the types of their defaults) and the ``--out`` folder (created, and a probe file written in it,
so that a run that could not save its results does not start); then the task, network and rule are built, a
``ValueError`` of their factories (a task option out of range) becoming the same one-line error (exit
status 2) and the folder created for the run removed again. ``history.json`` records the settings actually
used (each once), the eproptax and JAX versions and the device.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import tasks as tasks_lib
from ._cli import (
    HelpFormatter,
    UsageError,
    missing_folders,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
    remove_folders,
    seed,
    writable_folder,
)
from ._eprop import random_feedback
from ._figures import plot_run
from ._registry import RULES, make_rule
from ._task_options import DEFAULT_TASK, parse_task_options
from ._train import NonFiniteError, train

_CLI_TYPES = {int: non_negative_int}  # a rule's integer options (``--order``) are counts: never negative


def _rule_flags() -> dict:
    """``{option name: [(rule, Option), ...]}`` for every rule-specific option of the registry (``--order``, ...)."""
    flags = {}
    for info in RULES.values():
        for option in info.options:
            flags.setdefault(option.name, []).append((info.name, option))
    return flags


def _rule_options(args) -> dict:
    """The rule-specific options of ``--rule``: those given on the command line, else the registry's defaults.

    Raises UsageError (a SystemExit) for an option given that the rule does not take.
    """
    info = RULES[args.rule]
    for name in _rule_flags():
        if getattr(args, name) is not None and name not in info.defaults:
            takes = ", ".join(f"--{o.name}" for o in info.options) or "none"
            raise UsageError(
                f"--{name} is not an option of --rule {args.rule} (its options: {takes}); "
                f"got --{name} {getattr(args, name)}"
            )
    return {
        name: default if getattr(args, name) is None else getattr(args, name) for name, default in info.defaults.items()
    }


def _check_rule_args(args, info) -> None:
    """Raises UsageError for ``--online-every`` or ``--feedback`` given to a rule that cannot take it."""
    if args.online_every is not None and not info.online_form:
        raise UsageError(
            f"--online-every is not an option of --rule {args.rule}, which has no online form (it needs the whole "
            f"sequence); got --online-every {args.online_every}"
        )
    if args.feedback is not None and not info.feedback:
        family = ", ".join(name for name, i in RULES.items() if i.feedback)
        raise UsageError(
            f"--feedback is not an option of --rule {args.rule}, which takes no feedback (the rules that do: "
            f"{family}); got --feedback {args.feedback}"
        )


def _prepare(args) -> types.SimpleNamespace:
    """Checks the options and builds the run (task, network, rule, output folder) before any training.

    Raises UsageError for an option that does not apply, a bad ``--task-option``, an ``--out`` folder that
    cannot be written, or a ``ValueError`` of a factory (a task option out of range, ...).
    """
    info = RULES[args.rule]
    _check_rule_args(args, info)
    options = _rule_options(args)
    if args.task is None:
        args.task = DEFAULT_TASK
        print(f"no --task given: training on {DEFAULT_TASK} (the default)")
    task_options = parse_task_options(args.task_option, args.task)
    out = args.out if args.out is not None else os.path.join("runs", f"{args.task}-{args.rule}")
    created = missing_folders(out)
    writable_folder(out)  # before the build: a bad --out is refused at once
    if args.task == "evidence" and "dt" not in task_options:
        task_options["dt"] = 10.0
        print("evidence accumulation on a 10 ms grid (225 steps); --task-option dt=1 gives the paper's 1 ms grid")
    try:
        run = _build(args, info, options, task_options)
    except BaseException:
        remove_folders(created)  # a refused run leaves no folder behind
        raise
    pattern = args.task == "pattern"  # one frozen input: a batch of one
    run.batch = args.batch if args.batch is not None else (1 if pattern else 32)
    run.eval_batch = args.eval_batch if args.eval_batch is not None else (1 if pattern else 512)
    run.out, run.task_options, run.info, run.options, run.label = out, task_options, info, options, info.label(options)
    return run


def _build(args, info, options: dict, task_options: dict) -> types.SimpleNamespace:
    """The task, network and rule of the run, and its keys; a factory's ``ValueError`` becomes a UsageError
    naming the options it came from."""
    k_net, k_feedback, k_train, k_eval = jax.random.split(jax.random.key(args.seed), 4)
    net_options = {"cell": args.cell, "n_rec": args.hidden, "layers": args.layers}
    net_options = {k: v for k, v in net_options.items() if v is not None}
    stage = f"--task {args.task}" + (" with --task-option" if args.task_option else "")
    try:
        task, test_task = _make_tasks(args, task_options)
        stage = "the network (--cell, --hidden, --layers)"
        model, params = task.network(k_net, **net_options)
        stage = f"--rule {args.rule}"
        rule = _make_rule(args, info, options, task, model, k_feedback)
    except ValueError as error:
        raise UsageError(f"{stage}: {one_line(str(error))}") from None
    return types.SimpleNamespace(
        task=task, test_task=test_task, model=model, params=params, rule=rule, k_train=k_train, k_eval=k_eval
    )


def run(args) -> int:
    """Runs ``eproptax train`` with the parsed ``args``: trains, prints the final metric, writes the outputs."""
    setup = _prepare(args)
    _print_setup(args, setup)
    start = time.perf_counter()
    try:
        params, history = train(
            setup.rule,
            setup.task,
            setup.params,
            _optimizer(args),
            steps=args.steps,
            key=setup.k_train,
            batch_size=setup.batch,
            model=setup.model,
            online_every=args.online_every,
            progress=not args.no_progress,
            desc=args.rule,
        )
    except NonFiniteError as error:  # the message says where; a lower --lr or a --clip is the usual fix
        print(f"eproptax {error} (--lr {args.lr}, --clip {args.clip})", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    task, metric = setup.task, setup.task.metric_name
    final = tasks_lib.evaluate(setup.test_task, setup.model, params, setup.k_eval, setup.eval_batch)
    print(
        f"final {metric} ({'test split' if args.task == 'digits' else 'fresh batch'}): {final[metric]:.4f}, "
        f"loss {final['loss']:.4f}; training took {total:.1f} s ({history['wall_s']:.1f} s in steps, "
        "compilation included)"
    )
    path = os.path.join(setup.out, "history.json")
    with open(path, "w") as f:
        json.dump(history_record(settings(args, setup), metric, history, final, total), f, indent=1, default=str)
    figures = plot_run(setup.out, task, setup.model, params, history, setup.k_eval, title=f"{args.task}, {setup.label}")
    print(f"wrote {path}" + "".join(f", {p}" for p in figures))
    return 0


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
    feedback = "symmetric" if args.feedback != "random" else random_feedback(key, n_rec, task.n_out, dtype)
    reg = None if args.no_reg else task.reg
    extra = {"feedback": feedback} if info.feedback else {}
    return make_rule(args.rule, model, task.loss, online=args.online_every is not None, reg=reg, **extra, **options)


def _print_setup(args, setup) -> None:
    """Prints the run's settings: task, network, rule, optimiser, batch, steps and seed."""
    task, model = setup.task, setup.model
    online = f", online every {args.online_every} steps" if args.online_every is not None else ""
    clip = f", gradients clipped to norm {args.clip}" if args.clip is not None else ""
    print(
        f"eproptax train: task {args.task} ({task.time_steps} steps, {task.n_in} inputs), "
        f"{len(model.layers) - 1} x {type_name(model)}({model.layers[-2].n_out}), rule {setup.label}{online}, "
        f"adam lr {args.lr} ({args.lr_schedule}){clip}, batch {setup.batch}, {args.steps} steps, seed {args.seed}"
    )


def _optimizer(args):
    """``optax.adam`` at ``--lr`` (constant or cosine-decayed), after clipping to ``--clip`` if given."""
    lr = optax.cosine_decay_schedule(args.lr, args.steps) if args.lr_schedule == "cosine" else args.lr
    optimizer = optax.adam(lr)
    if args.clip is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(args.clip), optimizer)
    return optimizer


def settings(args, setup) -> dict:
    """The settings of a run as used (defaults resolved), each once: ``history.json``'s ``"settings"``."""
    task, model = setup.task, setup.model
    return {
        "task": args.task,
        "task_options": setup.task_options,
        "time_steps": task.time_steps,
        "n_in": task.n_in,
        "n_out": task.n_out,
        "cell": type_name(model).lower(),
        "hidden": model.layers[-2].n_out,
        "layers": len(model.layers) - 1,
        "rule": args.rule,
        "rule_options": setup.options,
        "feedback": (args.feedback or "symmetric") if setup.info.feedback else None,
        "online_every": args.online_every,
        "reg": not args.no_reg and task.reg is not None,
        "optimizer": "adam",
        "lr": args.lr,
        "lr_schedule": args.lr_schedule,
        "clip": args.clip,
        "batch": setup.batch,
        "steps": args.steps,
        "eval_batch": setup.eval_batch,
        "seed": args.seed,
        "dtype": "float64" if args.float64 else "float32",
    }


def version() -> str:
    """The installed eproptax's version: ``eproptax.__version__``, else the package metadata's."""
    import eproptax

    found = getattr(eproptax, "__version__", None)
    return found if found is not None else importlib.metadata.version("eproptax")


def history_record(settings: dict, metric_name: str, history: dict, final: dict, wall_s: float) -> dict:
    """``history.json``: the settings, the loss and metric per step, the final evaluation, versions and device."""
    return {
        "settings": settings,
        "metric_name": metric_name,
        "loss": np.asarray(history["loss"]).tolist(),
        "metric": np.asarray(history["metric"]).tolist(),
        "final": final,
        "wall_s": wall_s,
        "eproptax": version(),
        "jax": jax.__version__,
        "device": jax.devices()[0].platform,
    }


def type_name(model) -> str:
    """The first layer's kind, from its carry's type (``ALIFState`` -> ``ALIF``)."""
    first = model.layers[0] if model.layers else model
    carry = jax.eval_shape(lambda: first.init_carry(first.init(jax.random.key(0))))
    return type(carry).__name__.replace("State", "") or "cell"


def add_parser(sub) -> None:
    """Adds ``eproptax train`` to ``sub``: every option checked as :mod:`eproptax._cli` describes."""
    p = sub.add_parser(
        "train",
        help="train a network on a task with any rule; write history.json and figures",
        description="Train a network on a standard task with any rule of the library, print the final metric "
        "and write history.json, learning_curves.png and raster.png. Every option is checked before training: "
        "a misuse exits with status 2 and one error line.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--task", choices=sorted(tasks_lib.TASKS), default=None, help=f"the task (default: {DEFAULT_TASK})")
    p.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="a keyword of the task factory, repeatable (e.g. --task-option dt=10); checked against the factory's "
        "keywords and the types of their defaults",
    )
    _add_rule_arguments(p)
    p.add_argument(
        "--cell",
        choices=["lif", "alif", "rnn", "lstm", "gru"],
        default=None,
        help="recurrent cell (default: the task's)",
    )
    p.add_argument("--hidden", type=positive_int, metavar="N", help="neurons per recurrent layer (default: the task's)")
    p.add_argument("--layers", type=positive_int, metavar="N", help="recurrent layers (default: the task's)")
    _add_training_arguments(p)
    p.add_argument("--seed", type=seed, default=0, help="jax.random.key seed, 0 to 2**32 - 1")
    p.add_argument("--float64", action="store_true", help="train in float64")
    p.add_argument("--out", metavar="DIR", help="output folder, checked before training (default: runs/<task>-<rule>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _add_rule_arguments(p) -> None:
    """``--rule``, the rules' own options (from the registry), ``--feedback`` and ``--online-every``."""
    p.add_argument("--rule", choices=list(RULES), default="eprop", help="a rule of ep.rules")
    for name, uses in _rule_flags().items():  # the rules' own options, from the registry
        first = uses[0][1]
        choices = list(dict.fromkeys(c for _, o in uses for c in (o.choices or ())))
        defaults = ", ".join(f"{rule} (default {o.default})" for rule, o in uses)
        kind = _CLI_TYPES.get(first.type, first.type)
        p.add_argument(f"--{name}", type=kind, choices=choices or None, default=None, help=f"{first.help}: {defaults}")
    p.add_argument(
        "--feedback",
        choices=["symmetric", "random"],
        default=None,
        help="learning signal of the e-prop family (default: symmetric; only for the rules that take feedback)",
    )
    p.add_argument(
        "--online-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="use the rule's online form and update every K time steps (default: per sequence; not for bptt)",
    )


def _add_training_arguments(p) -> None:
    """The batch sizes, steps and optimiser, and ``--no-reg``."""
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default: 32; 1 for pattern)")
    p.add_argument(
        "--eval-batch",
        type=positive_int,
        metavar="N",
        help="batch of the final evaluation (default: 512; 1 for pattern)",
    )
    p.add_argument("--steps", type=positive_int, default=300, metavar="N", help="training steps, one batch each")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="learning rate of optax.adam")
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="constant, or cosine decay from --lr to 0 over the training steps",
    )
    p.add_argument(
        "--clip",
        type=positive_float,
        metavar="NORM",
        help="clip the gradient's global norm (optax.clip_by_global_norm), e.g. for BPTT on long spiking sequences "
        "(default: no clipping)",
    )
    p.add_argument("--no-reg", action="store_true", help="train without the task's firing-rate regulariser")
