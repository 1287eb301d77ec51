"""The ``eproptax`` command line: ``compare``, ``bench`` and ``train`` (the subcommands registered below).

Misuse is refused before any work starts, the way argparse refuses an unknown option: the usage, then one
line ``eproptax <command>: error: <option>: expected <range>, got <value>``, and exit status 2, never a
Python traceback. Numeric options are checked while parsing (the ``type=`` functions here:
:func:`positive_int`, :func:`non_negative_int`, :func:`positive_float`, :func:`seed`); what can only be
checked once the options are known together (an option the chosen rule does not take, a ``--task-option``
the task does not take, an ``--out`` folder that cannot be written) raises :class:`UsageError` from the
subcommand, which :func:`main` reports the same way. ``--help`` shows every default.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile

# name -> module defining ``add_parser(subparsers)`` (which sets ``func`` on its parser)
SUBCOMMANDS = {
    "compare": "eproptax._compare",
    "bench": "eproptax._bench",
    "train": "eproptax._train_cli",
}

SEED_MAX = 2**32 - 1  # jax.random.key takes a 32-bit seed (2**32 would silently be seed 0)


class UsageError(SystemExit):
    """A misuse of the command line found after parsing (its message starts with the option it names).

    :func:`main` reports it as argparse reports its own errors: the usage and one ``error:`` line, exit
    status 2. Raised outside :func:`main` it is a ``SystemExit`` with its message (exit status 1).
    """


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with ``(default: ...)`` after every option's help, a list as it is typed, except
    defaults of ``None`` or ``False`` (an option without a fixed default says in its help what it falls back
    to; a flag is off)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        if isinstance(action.default, list) and action.help:  # as typed: --cells lif alif lstm gru
            return f"{action.help} (default: {' '.join(str(d) for d in action.default)})"
        return super()._get_help_string(action)


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined by spaces (an argparse error is one line)."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _shown(text: str) -> str:
    """``text`` as an error message shows a value received: bare if it reads as a number, else quoted."""
    try:
        float(text)
    except ValueError:
        return repr(text)
    return text


def _integer(text: str, minimum: int, expected: str, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {_shown(text)}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer ``>= 1`` (``--batch``, ``--hidden``, ``--steps``, ...)."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer ``>= 0`` (``--order``, ``--rtrl-max-hidden``)."""
    return _integer(text, 0, "a non-negative integer")


def seed(text: str) -> int:
    """argparse ``type=``: a seed of ``jax.random.key``, an integer from 0 to ``2**32 - 1``."""
    return _integer(text, 0, f"an integer from 0 to {SEED_MAX}", SEED_MAX)


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number ``> 0`` (``--lr``, ``--clip``); ``nan`` and ``inf`` are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {_shown(text)}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse ``type=``: a number in ``(0, 1]`` (``--connectivity``)."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def writable_folder(path: str, option: str = "--out") -> str:
    """Creates the folder ``path`` if needed and writes (then removes) a probe file in it; returns ``path``.

    Raises :class:`UsageError` naming ``option`` when ``path`` is empty, is a file, lies under a file, or
    cannot be written: a subcommand calls it before any work, so a bad output folder costs nothing.
    """
    if not path:
        raise UsageError(f"{option}: expected a folder, got ''")
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".eproptax-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        reason = "it is a file" if os.path.isfile(path) else error.strerror or str(error)
        raise UsageError(f"{option}: expected a writable folder, got {path!r} ({reason})") from None
    return path


def missing_folders(path: str) -> list[str]:
    """The folders of ``path`` that do not exist yet, deepest first: what :func:`writable_folder` creates."""
    missing, folder = [], os.path.abspath(path)
    while folder and not os.path.exists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def remove_folders(folders: list[str]) -> None:
    """Removes ``folders`` (deepest first) while they are empty: undoes :func:`writable_folder` on a refusal."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def main(argv=None) -> int:
    """Parses ``argv`` and runs the subcommand; a :class:`UsageError` exits with status 2 and one line."""
    parser = argparse.ArgumentParser(
        prog="eproptax", description="Recurrent learning rules in JAX.", formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UsageError as error:
        sub.choices[args.command].error(one_line(str(error)))  # exits with status 2


if __name__ == "__main__":
    sys.exit(main())
