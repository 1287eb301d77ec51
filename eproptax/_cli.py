"""The ``eproptax`` command line: ``compare`` (and the subcommands registered below)."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module defining ``add_parser(subparsers)`` (which sets ``func`` on its parser)
SUBCOMMANDS = {
    "compare": "eproptax._compare",
    "bench": "eproptax._bench",
    "train": "eproptax._train_cli",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="eproptax", description="Recurrent learning rules in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
