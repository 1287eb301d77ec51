"""``eproptax train --task-option KEY=VALUE``: each pair checked against the task factory's signature.

A key the factory does not take, a pair without ``=``, ``dtype`` (set by ``--float64``), a key given twice or a
value of another type than the keyword's default (``dt=abc``) is a :class:`~eproptax._cli.UsageError`.
"""

from __future__ import annotations

import ast
import inspect
import math

from . import tasks as tasks_lib
from ._cli import UsageError

DEFAULT_TASK = "evidence"


# a task option's default's type -> (accepted types, what the message says is expected)
_VALUE_KINDS = (
    (bool, (bool,), "True or False"),
    (int, (int,), "an integer"),
    (float, (int, float), "a finite number"),
    ((tuple, list), (tuple, list), "a tuple"),
)


def _task_parameters(task: str) -> dict:
    """``{keyword: inspect.Parameter}`` of the factory of ``task`` that ``--task-option`` may set."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(tasks_lib.TASKS[task]).parameters
    return {name: p for name, p in parameters.items() if p.kind in kinds and name != "dtype"}


def _task_value(task: str, name: str, text: str, default):
    """The value of ``--task-option name=text``, of the type of the factory's ``default`` where it has one."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(default, str):
        return value if isinstance(value, str) else text  # split=test, encoding='analog'
    for kind, accepted, expected in _VALUE_KINDS:
        if not isinstance(default, kind):
            continue
        wrong = not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool)
        if wrong or (kind is float and not math.isfinite(value)):
            raise UsageError(f"--task-option {name}: expected {expected} ({task}'s `{name}`), got {text!r}")
        if kind is float:
            return float(value)
        return tuple(value) if isinstance(value, list) else value
    return value


def parse_task_options(pairs, task: str = DEFAULT_TASK) -> dict:
    """``{keyword: value}`` of the ``--task-option KEY=VALUE`` pairs, checked against the factory of ``task``.

    Raises UsageError for a pair without ``=``, a key the factory does not take (or ``dtype``: see
    ``--float64``), a key given twice, or a value of another type than the keyword's default (``dt=abc``).
    """
    parameters, options = _task_parameters(task), {}
    for pair in pairs or ():
        name, equals, text = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UsageError(f"--task-option: expected KEY=VALUE, got {pair!r}")
        if name == "dtype":
            raise UsageError(f"--task-option: the dtype is set by --float64, got {pair!r}")
        if name not in parameters:
            raise UsageError(
                f"--task-option: --task {task} takes no option {name!r} (its options: {', '.join(parameters)}), "
                f"got {pair!r}"
            )
        if name in options:
            raise UsageError(f"--task-option: {name} given twice, got {pair!r} after {name}={options[name]!r}")
        options[name] = _task_value(task, name, text, parameters[name].default)
    return options
