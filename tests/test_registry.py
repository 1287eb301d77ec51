"""The registry of rules (``ep.rules``, ``ep.make_rule``) and every consumer that reads it.

Every rule built by name lowers to the same program as its factory called directly (the registry's
defaults are the factories' own) and runs on one tiny network; the README's table of rules, ``eproptax
train --rule``, ``eproptax compare`` and ``eproptax bench`` are checked against the registry without
compiling anything.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RULES, Config, mse, problem

import eproptax as ep
from eproptax import _bench, _compare, _registry, _train_cli
from eproptax._registry import table

README = Path(__file__).parent.parent / "README.md"
CFG = Config()  # one LIF layer of 4 and a leaky readout, T = 8, batch 2, float64
DIRECT = {
    "bptt": "bptt",
    "rtrl": "rtrl",
    "eprop": "eprop",
    "eprop_m": "eprop_m1",
    "deep_eprop": "deep_eprop",
    "snap": "snap",
    "pp_prop": "pp_prop",
    "tbptt": "tbptt",
    "uoro": "uoro",
    "kf_rtrl": "kf_rtrl",
}
FACTORIES = {
    **RULES,
    "snap": ep.snap,
    "pp_prop": ep.pp_prop,
    "tbptt": ep.tbptt,
    "uoro": ep.uoro,
    "kf_rtrl": ep.kf_rtrl,
}  # called directly, by DIRECT's names


def test_readme_table_is_the_registry_table():
    text = README.read_text()
    section = text[text.index("## The rules") :]
    start = section.index("| rule | gradient |")
    lines = section[start:].splitlines()
    readme_table = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("|"))])
    assert readme_table == table(), (
        "README.md's table of rules differs from the registry's; paste the output of "
        "`python -c 'from eproptax._registry import table; print(table())'` into its section 'The rules'."
    )


def test_every_rule_is_exported_under_its_name():
    assert list(ep.rules) == [
        "bptt",
        "rtrl",
        "eprop",
        "eprop_m",
        "deep_eprop",
        "snap",
        "pp_prop",
        "tbptt",
        "uoro",
        "kf_rtrl",
    ]
    for name, info in ep.rules.items():
        assert info.name == name
        assert getattr(ep, name) is info.grad_fn, f"ep.{name}"
        if info.online_form:
            assert getattr(ep.online, name) is info.online, f"ep.online.{name}"
            assert name in ep.online.__all__
        else:
            assert not hasattr(ep.online, name)
    with pytest.raises(TypeError):
        ep.rules["new"] = ep.rules["eprop"]  # read-only


@pytest.mark.parametrize("name", list(ep.rules))
def test_keywords_match_the_factories(name):
    info = ep.rules[name]
    factories = [(info.grad_fn, False)] + ([(info.online, True)] if info.online_form else [])
    for factory, online in factories:
        parameters = list(inspect.signature(factory).parameters)[2:]  # after model, loss
        assert set(info.keywords(online=online)) == set(parameters), f"{factory.__name__}: {parameters}"
    assert ("feedback" in info.keywords()) == info.feedback and ("chunk" in info.keywords()) == info.chunk


@pytest.mark.parametrize("name", list(ep.rules))
def test_make_rule_builds_every_rule(name):
    prob = problem(CFG)
    args = (prob.params, prob.inputs, prob.targets)
    fn = jax.jit(ep.make_rule(name, prob.model, mse))
    key = {"key": jax.random.key(0)} if ep.rules[name].random else {}  # uoro draws noise from its key
    # the registry's defaults are the factories' own (eprop_m's order 1, deep_eprop's depth "full", order 0):
    # the same program as the factory called directly
    direct = jax.jit(FACTORIES[DIRECT[name]](prob.model, mse))
    assert fn.lower(*args, **key).as_text() == direct.lower(*args, **key).as_text()
    loss, grads = fn(*args, **key)
    assert np.isfinite(float(loss))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(prob.params)
    assert all(
        g.shape == p.shape for g, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(prob.params))
    )
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    if ep.rules[name].online_form:
        rule = ep.make_rule(name, prob.model, mse, online=True)
        assert isinstance(rule, ep.OnlineRule)
        state = jax.eval_shape(lambda params: rule.init(params, CFG.batch, **key), prob.params)
        assert isinstance(state, ep.OnlineState)


def test_make_rule_passes_options_and_fills_defaults(monkeypatch):
    """Options given reach the factory; rule-specific options not given take the registry's defaults."""
    calls = []
    info = ep.rules["deep_eprop"]
    fake = info._replace(grad_fn=lambda model, loss, **kw: calls.append(kw), online=lambda model, loss, **kw: kw)
    monkeypatch.setattr(_registry, "RULES", {**ep.rules, "deep_eprop": fake})
    ep.make_rule("deep_eprop", None, mse, depth="spatial", chunk=4)
    assert calls == [{"depth": "spatial", "order": 0, "chunk": 4}]
    assert ep.make_rule("deep_eprop", None, mse, online=True, order=2) == {"depth": "full", "order": 2}


def test_make_rule_errors():
    model = ep.cells.stack(ep.cells.lif(3, 4), ep.cells.leaky_readout(4, 2))
    with pytest.raises(ValueError, match=r"make_rule: `name` must be one of 'bptt', 'rtrl', .*got 'eprop_n'"):
        ep.make_rule("eprop_n", model, mse)
    with pytest.raises(ValueError, match=r"`name` must be one of .* got <function"):
        ep.make_rule(ep.eprop, model, mse)
    with pytest.raises(ValueError, match=r"eprop takes no option `order`: expected one of 'feedback', .*got order=1"):
        ep.make_rule("eprop", model, mse, order=1)
    with pytest.raises(
        ValueError, match=r"rtrl \(online\) takes no option `unroll`: expected one of 'reg', got unroll=2"
    ):
        ep.make_rule("rtrl", model, mse, online=True, unroll=2)
    with pytest.raises(ValueError, match=r"bptt takes no option `feedback`"):
        ep.make_rule("bptt", model, mse, feedback="symmetric")
    with pytest.raises(ValueError, match=r"`online=True` needs a rule with an online form \('rtrl', .*got 'bptt'"):
        ep.make_rule("bptt", model, mse, online=True)
    with pytest.raises(
        ValueError, match=r"deep_eprop's `depth` must be one of 'full', 'collapsed', 'spatial', got 'deep'"
    ):
        ep.make_rule("deep_eprop", model, mse, depth="deep")


def test_labels():
    assert ep.rules["eprop"].label() == "eprop"
    assert ep.rules["eprop_m"].label({"order": 1, "feedback": "symmetric"}) == "eprop_m(order=1)"
    assert ep.rules["eprop_m"].label({"order": 2}, keys=False) == "eprop_m(2)"
    assert ep.rules["deep_eprop"].label({"order": 0, "depth": "full"}) == "deep_eprop(depth=full, order=0)"
    assert ep.rules["deep_eprop"].label({"depth": "spatial"}, keys=False) == "deep_eprop(spatial)"


def _train_parser():
    parser = argparse.ArgumentParser()
    _train_cli.add_parser(parser.add_subparsers())
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]


def test_train_cli_reads_the_registry():
    actions = {a.dest: a for a in _train_parser()._actions}
    assert list(actions["rule"].choices) == list(ep.rules)
    assert list(actions["depth"].choices) == ["full", "collapsed", "spatial"]
    assert "eprop_m (default 1), deep_eprop (default 0)" in actions["order"].help
    args = _train_parser().parse_args(["--rule", "deep_eprop", "--order", "2"])
    assert _train_cli._rule_options(args) == {"depth": "full", "order": 2}
    args = _train_parser().parse_args(["--rule", "eprop", "--order", "2"])
    with pytest.raises(SystemExit, match=r"--order is not an option of --rule eprop \(its options: none\)"):
        _train_cli._rule_options(args)


def test_compare_and_bench_names_are_unchanged(monkeypatch):
    monkeypatch.setattr(_compare, "make_rule", lambda name, model, loss, **options: (name, options))
    monkeypatch.setattr(_compare, "keyed", lambda info, fn: fn)
    lifs = lambda layers: [ep.cells.lif(3 if i == 0 else 4, 4) for i in range(layers)]
    model = lambda layers: ep.cells.stack(*lifs(layers), ep.cells.leaky_readout(4, 2))
    problem = lambda layers: _compare.Problem(model(layers), None, jnp.zeros((1, 2, 3)), None, mse)
    one, two = _compare.rules_for(problem(1)), _compare.rules_for(problem(2), include_rtrl=False)
    base = ["bptt", "rtrl", "eprop", "eprop (random B)", "eprop_m(order=0)", "eprop_m(order=1)", "eprop_m(order=2)"]
    assert list(one) == base + ["deep_eprop(full)", "snap", "pp_prop", "tbptt", "uoro", "kf_rtrl"]
    deep = ["deep_eprop(spatial)", "deep_eprop(collapsed)", "deep_eprop(full)"]
    assert list(two) == [n for n in base if n != "rtrl"] + deep + ["snap", "pp_prop", "tbptt", "uoro", "kf_rtrl"]
    assert one["eprop_m(order=2)"] == ("eprop_m", {"order": 2})
    assert one["eprop (random B)"][1]["feedback"].shape == (4, 2)
    assert two["deep_eprop(collapsed)"] == ("deep_eprop", {"depth": "collapsed"})
    assert [spec.name for spec in _bench.RULES] == [
        "forward",
        "bptt",
        "rtrl",
        "eprop (leaky readout)",
        "forward (stateless readout)",
        "bptt (stateless readout)",
        "eprop (stateless readout)",
        "eprop_m(0)",
        "eprop_m(1)",
        "eprop_m(2)",
        "snap",
        "bptt (2 layers)",
        "deep_eprop(spatial)",
        "deep_eprop(full)",
        "pp_prop",
        "tbptt",
        "uoro",
        "kf_rtrl",
    ]
    assert [(s.kind, s.online is not None) for s in _bench.RULES if s.name.startswith(("rtrl", "eprop_m"))] == [
        ("rtrl", True),
        ("traces", True),
        ("traces", True),
        ("traces", True),
    ]


def test_readme_says_how_to_register_a_rule():
    section = README.read_text().split("## The rules")[1].split("\n## ")[0]
    assert re.search(r"eproptax/_registry\.py", section)
