"""The benchmark's bookkeeping: the useful work that its roofline column divides by (nothing is compiled).

A dense level of the e-prop family, pushed from a dense level through a synapse of ``k`` gates from ``n``
neurons, costs ``2 B n k P n`` FLOPs per step (``P = n k m`` columns); pushed from a compact own trace it
is elementwise (no product); RTRL's influence update costs ``2 B |theta| C^2``. Both are written out here
from the network's sizes, independently of the states' layout.
"""

from __future__ import annotations

import pytest
from jax.flatten_util import ravel_pytree

from eproptax._bench import RULES, build, influence_shape, problem, useful_work

SPECS = {spec.name: spec for spec in RULES}
N_IN, HIDDEN, BATCH = 3, 4, 2
GATES = {"lif": 1, "gru": 4, "lstm": 4}  # a reset-after GRU: its candidate's input and recurrent parts apart


@pytest.mark.parametrize("cell", sorted(GATES))
@pytest.mark.parametrize("name, levels", [("eprop (leaky readout)", 0), ("eprop_m(1)", 1), ("eprop_m(2)", 2)])
def test_useful_work_counts_every_dense_level(cell, name, levels):
    spec = SPECS[name]
    prob = problem(cell, readout=spec.readout, n_in=N_IN, hidden=HIDDEN, batch=BATCH, time_steps=2)
    _, online = build(spec, prob)
    n, k = HIDDEN, GATES[cell]
    columns = n * k * (N_IN + n + 1)
    dense_sources = max(levels - 1, 0)  # level 1 is pushed from the compact level 0: elementwise, no product
    assert useful_work(online, prob, spec.kind)["flops"] == dense_sources * 2.0 * BATCH * n * k * columns * n


@pytest.mark.parametrize("cell", sorted(GATES))
def test_useful_work_of_rtrl(cell):
    spec = SPECS["rtrl"]
    prob = problem(cell, readout=spec.readout, n_in=N_IN, hidden=HIDDEN, batch=BATCH, time_steps=2)
    _, online = build(spec, prob)
    batch, carry, _ = influence_shape(online.init(prob.params, BATCH))
    states = {"lif": 1, "gru": 1, "lstm": 2}[cell]  # the leaky readout adds its 2 outputs to the carry
    assert (batch, carry) == (BATCH, states * HIDDEN + 2)
    flops = 2.0 * BATCH * ravel_pytree(prob.params)[0].size * carry**2
    assert useful_work(online, prob, spec.kind)["flops"] == flops


def test_useful_work_of_deep_full_counts_only_products_from_dense_levels():
    """Three LIF layers: layer 2's influence of layer 0 is pushed from layer 1's, which is dense (one product);
    every other cross-layer influence comes from a compact own trace."""
    spec = SPECS["deep_eprop(full)"]
    prob = problem("lif", readout=spec.readout, layers=3, n_in=N_IN, hidden=HIDDEN, batch=BATCH, time_steps=2)
    _, online = build(spec, prob)
    columns_0 = HIDDEN * 1 * (N_IN + HIDDEN + 1)  # layer 0's effective weights
    assert useful_work(online, prob, spec.kind)["flops"] == 2.0 * BATCH * HIDDEN * 1 * columns_0 * HIDDEN


def test_connectivity_sweep(tmp_path):
    """``eproptax bench --connectivity``: every form's memory and step measured and written to bench.json; the
    compressed and masked programs take less memory than the dense cell's at 25% fan-in."""
    import json

    from eproptax._cli import main

    argv = ["bench", "--connectivity", "0.25", "--hidden", "32", "--n-in", "8", "--batch", "2", "--repeats", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "bench.json").read_text())["connectivity"]
    assert set(row["memory"]) == set(row["step"]) == {"compressed", "masked", "dense"}
    assert row["memory"]["compressed"] < row["memory"]["dense"] and row["memory"]["masked"] < row["memory"]["dense"]
    assert all(v > 0 for v in row["memory"].values())
