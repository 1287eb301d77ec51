"""Misuse of the command line: every bad command line exits with status 2 and one error line, before any work.

The cases of :data:`SUBPROCESS` run ``python -m eproptax ...`` in a subprocess (the command line as a user
runs it), concurrently (each process pays JAX's import, 2 to 3 s on the CI machine), with the working tree on
``PYTHONPATH``; the others call ``eproptax._cli.main(argv)`` in this process, which runs the same code after
the interpreter starts (its exit status is the ``SystemExit`` code, its output captured). All run in one
scratch folder. Each case names the command, the command line and the words the error line must contain: the
option, and the value received.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FILE = "a-file"  # a file in the scratch folder, for --out
LONG = ["--task", "copy", "--hidden", "4", "--steps", "100000"]  # would train for minutes if it started

# (id, command line, words the error line names)
CASES = [
    ("train-batch-0", ["train", "--batch", "0"], ["--batch", "positive integer", "got 0"]),
    ("train-batch-text", ["train", "--batch", "abc"], ["--batch", "'abc'"]),
    ("train-hidden-0", ["train", "--hidden", "0"], ["--hidden", "got 0"]),
    ("train-layers-0", ["train", "--layers", "0"], ["--layers", "got 0"]),
    ("train-steps-0", ["train", "--steps", "0"], ["--steps", "got 0"]),
    ("train-lr-0", ["train", "--lr", "0"], ["--lr", "positive", "got 0"]),
    ("train-lr-nan", ["train", "--lr", "nan"], ["--lr", "finite", "got nan"]),
    ("train-eval-batch-0", ["train", "--eval-batch", "0"], ["--eval-batch", "got 0"]),
    ("train-clip-0", ["train", "--clip", "0"], ["--clip", "got 0"]),
    ("train-online-every-0", ["train", "--online-every", "0"], ["--online-every", "got 0"]),
    ("train-seed-too-big", ["train", "--seed", str(2**32)], ["--seed", "4294967295", f"got {2**32}"]),
    ("train-order-negative", ["train", "--rule", "eprop_m", "--order", "-1"], ["--order", "non-negative", "got -1"]),
    ("train-order-eprop", ["train", "--rule", "eprop", "--order", "1"], ["--order", "--rule eprop", "got --order 1"]),
    ("train-depth-eprop", ["train", "--rule", "eprop", "--depth", "spatial"], ["--depth", "--rule eprop", "spatial"]),
    ("train-online-bptt", ["train", "--rule", "bptt", "--online-every", "5"], ["--online-every", "bptt", "5"]),
    ("train-feedback-rtrl", ["train", "--rule", "rtrl", "--feedback", "random"], ["--feedback", "rtrl", "random"]),
    ("train-feedback-bptt", ["train", "--rule", "bptt", "--feedback", "symmetric"], ["--feedback", "symmetric"]),
    ("task-option-no-equals", ["train", "--task-option", "dt"], ["--task-option", "KEY=VALUE", "'dt'"]),
    ("task-option-unknown", ["train", "--task-option", "foo=1"], ["--task-option", "'foo'", "foo=1"]),
    ("task-option-type", ["train", "--task-option", "dt=abc"], ["--task-option dt", "number", "'abc'"]),
    (
        "task-option-int",
        ["train", "--task", "copy", "--task-option", "length=2.5"],
        ["--task-option length", "integer", "2.5"],
    ),
    ("task-option-dtype", ["train", "--task-option", "dtype=float64"], ["--task-option", "--float64", "dtype"]),
    ("task-option-twice", ["train", "--task-option", "dt=1", "--task-option", "dt=2"], ["--task-option", "dt=2"]),
    # refused by the task factory, after --out was created: the folders created are removed again
    (
        "task-option-range",
        ["train", "--task-option", "n_cues=4", "--out", "new-1/run"],
        ["--task-option", "n_cues", "4"],
    ),
    (
        "task-option-adding",
        ["train", "--task", "adding", "--task-option", "time_steps=1", "--out", "new-2/run"],
        ["time_steps", "1"],
    ),
    ("train-out-file", ["train", *LONG, "--out", FILE], ["--out", FILE, "file"]),
    ("train-out-under-file", ["train", *LONG, "--out", f"{FILE}/run"], ["--out", f"{FILE}/run"]),
    ("train-out-empty", ["train", *LONG, "--out", ""], ["--out", "''"]),
    ("compare-hidden-0", ["compare", "--hidden", "0"], ["--hidden", "got 0"]),
    ("compare-n-in-0", ["compare", "--n-in", "0"], ["--n-in", "got 0"]),
    ("compare-layers-0", ["compare", "--layers", "0"], ["--layers", "got 0"]),
    ("bench-repeats-0", ["bench", "--repeats", "0"], ["--repeats", "got 0"]),
    ("bench-rtrl-max-negative", ["bench", "--rtrl-max-hidden", "-1"], ["--rtrl-max-hidden", "got -1"]),
    ("bench-out-file", ["bench", "--quick", "--out", FILE], ["--out", FILE, "file"]),
    ("bench-connectivity-2", ["bench", "--connectivity", "0.1", "2"], ["--connectivity", "(0, 1]", "got 2"]),
]
HELP = ("train-help", ["train", "--help"])
# one case of each kind of check through a real process: parsing, rule options, task options, factories, --out
SUBPROCESS = {
    "train-batch-0",
    "train-lr-nan",
    "train-order-eprop",
    "task-option-unknown",
    "task-option-range",
    "train-out-file",
    "compare-hidden-0",
    "bench-out-file",
    HELP[0],
}


def _run(argv: list[str], cwd: pathlib.Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "eproptax", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.perf_counter() - start


def _run_here(argv: list[str], cwd: pathlib.Path) -> tuple[subprocess.CompletedProcess, float]:
    from eproptax._cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    start = time.perf_counter()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue()), time.perf_counter() - start


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    """``({id: (CompletedProcess, seconds)}, scratch folder)``: every case, in one folder (:data:`SUBPROCESS`'s
    in processes run concurrently, the others here meanwhile)."""
    scratch = tmp_path_factory.mktemp("cli")
    (scratch / FILE).write_text("not a folder")
    cases = [(name, argv) for name, argv, _ in CASES] + [HELP]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, argv, scratch) for name, argv in cases if name in SUBPROCESS}
        here = {name: _run_here(argv, scratch) for name, argv in cases if name not in SUBPROCESS}
        return {**here, **{name: future.result() for name, future in futures.items()}}, scratch


def test_there_are_enough_cases():
    assert len(CASES) >= 30 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, words", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_misuse_is_one_error_line_with_status_2(results, request, argv, words):
    done, _ = results[0][request.node.callspec.id]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    prefix = f"eproptax {argv[0]}: error: "
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and lines[-1].startswith(prefix), lines
    assert lines[0].startswith("usage:") and all(line.startswith(" ") for line in lines[1:-1]), lines
    for word in words:
        assert word in lines[-1], (word, lines[-1])


def test_a_bad_out_is_refused_before_any_training(results):
    scratch = results[1]
    for name in ("train-out-file", "train-out-under-file", "train-out-empty", "bench-out-file"):
        done, _ = results[0][name]
        assert done.returncode == 2, name
        # the run's settings (printed right before the training) and the bench's header never came
        assert "eproptax train: task" not in done.stdout and "eproptax bench on" not in done.stdout, done.stdout
    # nothing was written anywhere: no history, no runs/ or results/ folder, the folders of the refused runs
    # (new-1/run, new-2/run) removed again, the file untouched
    assert sorted(p.name for p in scratch.iterdir()) == [FILE]
    assert (scratch / FILE).read_text() == "not a folder"


def test_no_task_names_the_default(results):
    done, _ = results[0]["train-batch-0"]  # refused while parsing: nothing printed
    assert done.stdout == ""
    done, _ = results[0]["task-option-range"]  # refused once the task is built: the default task was named
    assert "no --task given: training on evidence (the default)" in done.stdout


def test_help_shows_the_defaults(results):
    done, _ = results[0][HELP[0]]
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join(done.stdout.split())  # whatever the wrapping
    assert "--steps N training steps, one batch each (default: 300)" in text
    assert "--lr LR learning rate of optax.adam (default: 0.005)" in text
    assert "a rule of ep.rules (default: eprop)" in text and "the task (default: evidence)" in text
    assert "--depth {full,collapsed,spatial}" in text  # every depth of ep.deep_eprop
    assert "(default: None)" not in text and "(default: False)" not in text


# ---------------------------------------------------------------------------------------------------------
# In process: the parser's metadata, the task options accepted, and the history record
# ---------------------------------------------------------------------------------------------------------


def _train_args(argv):
    from eproptax import _train_cli

    parser = argparse.ArgumentParser()
    _train_cli.add_parser(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return sub.parse_args(argv)


def test_depth_takes_every_depth_of_the_api():
    from eproptax._deep_eprop import DEPTHS

    for depth in DEPTHS:
        assert _train_args(["--rule", "deep_eprop", "--depth", depth]).depth == depth


def test_good_task_options_are_typed():
    from eproptax._task_options import parse_task_options as _task_options

    assert _task_options(["dt=2", "n_cues=5", "rate_hz=40"], "evidence") == {"dt": 2.0, "n_cues": 5, "rate_hz": 40.0}
    assert type(_task_options(["dt=2"], "evidence")["dt"]) is float
    assert _task_options(["encoding=analog", "split='test'"], "digits") == {"encoding": "analog", "split": "test"}
    assert _task_options(["periods=[100, 50]"], "pattern") == {"periods": (100, 50)}


def test_history_records_the_settings_used_once_and_the_version(tmp_path):
    import eproptax as ep
    from eproptax import _train_cli

    out = tmp_path / "new" / "run"
    args = _train_args(
        ["--task", "copy", "--rule", "bptt", "--hidden", "4", "--batch", "3", "--clip", "1.5"]
        + ["--task-option", "length=2", "--out", str(out)]
    )
    setup = _train_cli._prepare(args)  # everything but the training
    assert out.is_dir() and not any(out.iterdir())  # created and probed, the probe removed
    settings = _train_cli.settings(args, setup)
    assert settings["batch"] == 3 and settings["eval_batch"] == 512 and settings["clip"] == 1.5
    assert settings["cell"] == "lstm" and settings["hidden"] == 4 and settings["layers"] == 1
    assert settings["rule"] == "bptt" and settings["rule_options"] == {} and settings["feedback"] is None
    assert settings["task_options"] == {"length": 2} and settings["dtype"] == "float32"
    assert not {"func", "order", "depth", "no_reg", "no_progress", "out", "task_option"} & set(settings)
    history = {"loss": np.ones(2, np.float32), "metric": np.zeros(2, np.float32)}
    record = _train_cli.history_record(settings, "accuracy", history, {"accuracy": 0.5}, 1.0)
    record = json.loads(json.dumps(record))  # as written
    assert record["eproptax"] == ep.__version__ and record["jax"]
    assert record["settings"] == settings and record["loss"] == [1.0, 1.0]
    assert not set(record["settings"]) & set(record)  # no field twice


def test_train_stops_with_one_line_at_a_non_finite_step(tmp_path, monkeypatch, capsys):
    """A ``NonFiniteError`` of the training (here raised by a stand-in for ``ep.train``) ends the command with
    its message on one line and exit status 1, after the run was set up and before anything is written."""
    import eproptax as ep
    from eproptax import _train_cli
    from eproptax._cli import main

    def diverging(*args, **kwargs):
        raise ep.NonFiniteError("train: training stopped at step 3 of 5 (counting from 0): the loss is nan.", 3, None)

    monkeypatch.setattr(_train_cli, "train", diverging)
    out = tmp_path / "run"
    argv = ["train", "--task", "copy", "--rule", "bptt", "--hidden", "4", "--steps", "5", "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "eproptax train: training stopped at step 3 of 5 (counting from 0): the loss is nan. (--lr 0.005, --clip None)"
    ]
    assert not (out / "history.json").exists()
