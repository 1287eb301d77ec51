"""Shared by the benchmark scripts: the results folder, command-line options, JSON and plots.

The measurements themselves (problems, compile and run timing, XLA's memory analysis, the machine's
bandwidth and matmul throughput) live in :mod:`eproptax._bench`, which ``eproptax bench`` also uses.
"""

from __future__ import annotations

import argparse
import os

from eproptax._bench import device_info, device_name, write_json
from eproptax._bench_sparse import interleaved_slopes as interleaved_slopes

HERE = os.path.dirname(os.path.abspath(__file__))


def results_dir(out=None) -> str:
    """``benchmarks/results/<device>/`` (or ``out``), created if needed."""
    path = out or os.path.join(HERE, "results", device_name())
    os.makedirs(path, exist_ok=True)
    return path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smaller sweep (about a minute)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device>)")
    return p


def save(name: str, payload: dict, out=None) -> str:
    """Writes ``<results>/<name>.json`` with the device information; returns its path."""
    path = os.path.join(results_dir(out), name + ".json")
    write_json(path, payload)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, heading: str, fontsize: int = 10, dpi: int = 110) -> None:
    """Gives ``fig`` its heading, lays it out, writes it to ``path`` and closes it."""
    fig.suptitle(heading, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def log_axes(ax, base: int = 10) -> None:
    """Log-log axes with a light grid on both tick levels."""
    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")


def title(text: str) -> str:
    info = device_info()
    where = info["cpu"] if info["platform"] == "cpu" else info["device_kind"]
    return f"{text}\n{info['device']} ({where}), jax {info['jax']}, float32"
