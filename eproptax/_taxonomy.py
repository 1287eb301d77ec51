"""``eproptax compare --rules all``: every rule on the taxonomy's axes, with its measured cost and gradient quality.

The axes are those of Martín-Sánchez, Bohté and Otte (2022), "A Taxonomy of Recurrent Learning Rules": what a
rule keeps of the *implicit* recurrence (a neuron's state through its own dynamics, ``D``), of the *explicit*
recurrence (the paths through recurrent weights between neurons), of *depth* (the paths across layers) and of
*time* (how far back a step's gradient reaches). :data:`PLACES` places every rule; :func:`measure` runs each
on LIF, ALIF, GRU and LSTM networks and reports its cosine to BPTT, its time per step and its memory beside
the registry's closed form; :func:`plot` draws the map.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax

from ._cli import UsageError, writable_folder
from ._compare import alignment, time_per_step
from ._measure import _memory, problem
from ._registry import RULES, keyed, make_rule

AXES = ("implicit", "explicit", "depth", "time")
CELLS = ("lif", "alif", "gru", "lstm")


class Place(NamedTuple):
    """One rule's place on the taxonomy's axes.

    Attributes:
      label: the display name (``"eprop_m(order=1)"``).
      rule: its name in ``ep.rules``.
      options: its options for :func:`~eproptax.make_rule`.
      implicit, explicit, depth, time: what it keeps on each axis, in words (``"all"``, ``"none"``, ...).
    """

    label: str
    rule: str
    options: dict
    implicit: str
    explicit: str
    depth: str
    time: str


PLACES = (
    Place("bptt", "bptt", {}, "all", "all", "all", "all (backward)"),
    Place("rtrl", "rtrl", {}, "all", "all", "all", "all (forward)"),
    Place("uoro", "uoro", {}, "all, in expectation", "all, in expectation", "all, in expectation", "all"),
    Place("kf_rtrl", "kf_rtrl", {}, "all, in expectation", "all, in expectation", "same step", "all"),
    Place("tbptt(window=10)", "tbptt", {"window": 10}, "all", "all", "all", "10 steps"),
    Place("snap(n=2)", "snap", {"n": 2}, "all", "2-step pattern", "2-step pattern", "all"),
    Place("eprop_m(order=2)", "eprop_m", {"order": 2}, "all", "2 steps", "same step", "all"),
    Place("eprop_m(order=1)", "eprop_m", {"order": 1}, "all", "1 step", "same step", "all"),
    Place("snap(n=1)", "snap", {"n": 1}, "all", "autapses", "same step", "all"),
    Place("eprop", "eprop", {}, "all", "none", "same step", "all"),
    Place("pp_prop", "pp_prop", {}, "pre x post factors", "none", "same step", "all"),
    Place("deep_eprop(full)", "deep_eprop", {"depth": "full"}, "all", "none", "all", "all"),
)
"""Every rule of the taxonomy's map, most to least exact (``deep_eprop``'s depths differ on stacks only)."""


def measure(cells=CELLS, *, hidden=16, time_steps=50, batch=4, repeats=3, seed=0, log=print) -> list[dict]:
    """Runs every :data:`PLACES` rule on a one-layer network of each cell (and a leaky readout).

    Each row: the place, the cell, the cosine and relative error of the gradient to BPTT's, the time per
    step (``ms_per_step``, the minimum of ``repeats`` runs), the compiled program's peak memory
    (``peak_bytes``: temporaries, arguments and outputs) and the registry's closed forms (``memory``,
    ``time_form``) of the rule's default form.
    """
    rows = []
    for cell in cells:
        prob = problem(cell, hidden=hidden, time_steps=time_steps, batch=batch, seed=seed)
        args = (prob.params, prob.inputs, prob.targets)
        reference = None
        for place in PLACES:
            info = RULES[place.rule]
            fn = keyed(info, make_rule(place.rule, prob.model, prob.loss, **place.options))
            compiled = jax.jit(fn).lower(*args).compile()
            best, _ = time_per_step(compiled, *args, repeats=repeats)
            _, grads = compiled(*args)
            reference = grads if reference is None else reference
            cosine, rel = alignment(grads, reference)
            memory = _memory(compiled)
            rows.append(
                dict(
                    place._asdict(),
                    cell=cell,
                    cosine=cosine,
                    rel_error=rel,
                    ms_per_step=1e3 * best / time_steps,
                    peak_bytes=None if memory is None else memory["peak"],
                    memory=_row(info, place.options).memory,
                    time_form=_row(info, place.options).time,
                )
            )
            if log:
                log(f"{cell:5s} {place.label:20s} cos {cosine:7.4f}  {1e3 * best / time_steps:8.3f} ms/step")
    return rows


def _row(info, options: dict):
    """The registry's row of the README's table for a rule called with ``options`` (its default form's if
    none is written for them): ``snap``'s ``n=2``, ``deep_eprop``'s ``depth="full"``."""
    written = ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in options.items())
    return next((row for row in info.rows if row.arguments == written), info.rows[0])


def table(rows: list[dict]) -> str:
    """The map as Markdown: one row per rule, its axes, and per cell its cosine to BPTT and ms per step."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    by = {(r["label"], r["cell"]): r for r in rows}
    head = ["rule", *AXES] + [f"{c.upper()} cos / ms / KiB" for c in cells]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for place in PLACES:
        if (place.label, cells[0]) not in by:
            continue
        cols = [f"`{place.label}`", place.implicit, place.explicit, place.depth, place.time]
        for c in cells:
            r = by[(place.label, c)]
            kib = "" if r["peak_bytes"] is None else f" / {r['peak_bytes'] / 1024:.0f}"
            cols.append(f"{r['cosine']:.3f} / {r['ms_per_step']:.3f}{kib}")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


FLOOR = 1e-6  # ``1 - cosine`` is drawn no lower: the exact rules sit on this line


def plot(rows: list[dict], path: str) -> str | None:
    """The map as a figure: per cell, each rule's gradient error ``1 - cosine`` to BPTT (log, lower is
    better; exact rules on the floor) against its time per step (log), the marker's area its peak memory, one
    colour and marker per rule in a shared legend. Returns ``path``, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'eproptax[plot]').")
        return None
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.3 * len(cells) + 2.2, 3.6), sharey=True, squeeze=False)
    peak = max((r["peak_bytes"] or 1) for r in rows)
    tab20 = plt.get_cmap("tab20")  # the dark of each pair first, then the light: 20 colours, 12 markers
    style = {p.label: (tab20((2 * i) % 20 + (2 * i) // 20), "osD^v<>ph*XP"[i % 12]) for i, p in enumerate(PLACES)}
    for ax, cell in zip(axes[0], cells):
        for r in (r for r in rows if r["cell"] == cell):
            colour, marker = style[r["label"]]
            error = max(1.0 - r["cosine"], FLOOR)
            size = 25 + 500 * (r["peak_bytes"] or 0) / peak
            ax.scatter(r["ms_per_step"], error, s=size, color=colour, marker=marker, alpha=0.8, label=r["label"])
        ax.set(xscale="log", yscale="log", title=f"{cell.upper()}", xlabel="ms per step")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axhline(FLOOR, color="0.6", lw=0.8, ls=":")
        ax.grid(alpha=0.3, which="major")
    axes[0][0].set_ylabel("1 - cosine to BPTT (exact on the dotted line)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for handle in handles:
        handle.set_sizes([40])
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle("Gradient error against time per step; marker area: the program's peak memory", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (3.3 * len(cells) + 2.2), 1))
    fig.savefig(path, dpi=140)
    plt.close(fig)
    return path


def run(args) -> int:
    """``eproptax compare --rules all``: measures, prints the Markdown table, writes ``taxonomy.json`` and
    ``taxonomy.png`` to ``args.out`` (when given). ``--cell``, ``--layers`` and ``--no-rtrl`` do not apply: it
    measures every rule on one layer of each of :data:`CELLS`."""
    for flag, ignored in (("--cell", args.cell != "lif"), ("--layers", args.layers != 2), ("--no-rtrl", args.no_rtrl)):
        if ignored:
            raise UsageError(f"{flag}: not an option of --rules all (it measures every rule on {', '.join(CELLS)})")
    print(
        f"eproptax compare --rules all on {jax.devices()[0].platform} (jax {jax.__version__}), float32; one layer "
        f"of {args.hidden} neurons + leaky readout, T={args.steps}, batch={args.batch}.\n"
        "Per cell: cosine to BPTT / ms per step (min of 3) / the compiled program's peak memory (KiB)."
    )
    out = writable_folder(args.out) if args.out is not None else None  # a bad --out is refused before measuring
    rows = measure(hidden=args.hidden, time_steps=args.steps, batch=args.batch, seed=args.seed, log=None)
    print(table(rows))
    if out:
        with open(os.path.join(out, "taxonomy.json"), "w") as f:
            json.dump(dict(rows=rows, device=jax.devices()[0].platform, jax=jax.__version__), f, indent=1)
        path = plot(rows, os.path.join(out, "taxonomy.png"))
        print(f"wrote {os.path.join(out, 'taxonomy.json')}" + (f" and {path}" if path else ""))
    return 0
