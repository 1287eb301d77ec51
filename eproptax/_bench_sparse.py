"""``eproptax bench --connectivity``: e-prop's memory and time per step against connectivity, sparse layouts
against the dense cell.

A LIF layer (``hidden`` neurons, ``n_in`` inputs, both masks at the same fixed fan-in ``p``, no autapses)
under a leaky readout, ``ep.eprop``, float32, in three forms: ``compressed`` (index tables, the weights
stored per synapse: ``lif(..., pre_in=, pre_rec=)``), ``masked`` (boolean masks: the gathered layout below
half the presynaptic values, else the dense one) and ``dense`` (the same cell without masks). Memory is
XLA's temporaries plus outputs of the compiled program at the longer length; time is the cost of one more
step, ``(t(T2) - t(T1)) / (T2 - T1)``, the forms' programs timed in interleaved rounds (:func:`interleaved_slopes`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._measure import _best_times

LAYOUTS = ("compressed", "masked", "dense")
LENGTHS = (20, 50)


def interleaved_slopes(programs: dict, lengths, rounds: int, repeats: int = 2) -> tuple[dict, dict]:
    """Times compiled programs ``{(label, T): (compiled, call)}``, one of each label per length in
    ``lengths = (T1, T2)``, in interleaved rounds (every program once per round, the minimum kept: the VM's
    speed moves within minutes, so programs compared must share the rounds). Returns each label's cost of
    one more step, ``(t(T2) - t(T1)) / (T2 - T1)``, and the minimum times themselves."""
    best = {key: float("inf") for key in programs}
    for _ in range(rounds):
        for key, (compiled, call) in programs.items():
            best[key] = min(best[key], _best_times(compiled, *call, repeats=repeats)[0])
    t1, t2 = lengths
    labels = dict.fromkeys(label for label, _ in programs)
    slopes = {label: (best[(label, t2)] - best[(label, t1)]) / (t2 - t1) for label in labels}
    return slopes, best


def network(hidden: int, p: float, layout: str, *, n_in: int = 64, n_out: int = 4, seed: int = 0):
    """``(model, params)``: the LIF network of the module docstring in one of :data:`LAYOUTS`."""
    import eproptax as ep

    k_in, k_rec, k_init = jax.random.split(jax.random.key(seed), 3)
    fan_in = max(1, round(p * n_in)), max(1, min(hidden - 1, round(p * hidden)))
    if layout == "compressed":
        pre_in = ep.cells.fan_in_indices(k_in, (hidden, n_in), fan_in[0])
        pre_rec = ep.cells.fan_in_indices(k_rec, (hidden, hidden), fan_in[1], autapses=False)
        cell = ep.cells.lif(n_in, hidden, pre_in=pre_in, pre_rec=pre_rec)
    elif layout == "masked":
        mask_in = ep.cells.fan_in_mask(k_in, (hidden, n_in), fan_in[0])
        mask_rec = ep.cells.fan_in_mask(k_rec, (hidden, hidden), fan_in[1], autapses=False)
        cell = ep.cells.lif(n_in, hidden, mask_in=mask_in, mask_rec=mask_rec)
    else:
        cell = ep.cells.lif(n_in, hidden)
    model = ep.cells.stack(cell, ep.cells.leaky_readout(hidden, n_out))
    return model, model.init(k_init)


def _mse(out, target):
    return jnp.sum((out - target) ** 2)


def measure_connectivity(
    hidden: int, p: float, *, n_in=64, n_out=4, batch=16, rounds=3, max_mib=600.0, layouts=LAYOUTS, seed=0
) -> dict:
    """One row: ``{hidden, p, memory: {layout: MiB}, step: {layout: seconds}}``; a form whose program passes
    ``max_mib`` is compiled for its memory but not timed."""
    import eproptax as ep

    programs, memory = {}, {}
    for layout in layouts:
        model, params = network(hidden, p, layout, n_in=n_in, n_out=n_out, seed=seed)
        fn = jax.jit(ep.eprop(model, _mse))
        for T in reversed(LENGTHS):  # the longer first: its memory decides whether the form is timed
            x = (jax.random.uniform(jax.random.key(seed + 1), (batch, T, n_in)) < 0.05).astype(jnp.float32)
            call = (params, x, jnp.zeros((batch, T, n_out)))
            compiled = fn.lower(*call).compile()
            if T == LENGTHS[-1]:
                analysis = compiled.memory_analysis()
                memory[layout] = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / 2**20
            if memory[layout] <= max_mib:
                programs[(layout, T)] = (compiled, call)
    slopes = interleaved_slopes(programs, LENGTHS, rounds)[0] if programs else {}
    return dict(hidden=hidden, p=p, n_in=n_in, batch=batch, memory=memory, step=slopes)


def format_rows(rows: list[dict]) -> list[str]:
    """A Markdown table: memory and step of each form, and the sparse forms' ratios to the dense cell."""
    lines = [
        "| neurons | fan-in | memory MiB: compressed / masked / dense | ratios to dense | step us: compressed / "
        "masked / dense | ratios to dense |",
        "| ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in rows:
        mem, step = r["memory"], r["step"]
        fmt = lambda d, scale, spec: " / ".join(f"{scale * d[k]:{spec}}" if k in d else "-" for k in LAYOUTS)
        ratio = lambda d: " / ".join(
            f"{d[k] / d['dense']:.2f}" if k in d and "dense" in d else "-" for k in ("compressed", "masked")
        )
        lines.append(
            f"| {r['hidden']} | {r['p']:.0%} | {fmt(mem, 1, '.1f')} | {ratio(mem)} | {fmt(step, 1e6, '.0f')} | "
            f"{ratio(step)} |"
        )
    return lines
