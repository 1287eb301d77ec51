"""The taxonomy's map (``eproptax compare --rules all``): every rule placed, measured, tabled and drawn."""

import numpy as np
import pytest

import eproptax as ep
from eproptax import _cli, _taxonomy


def test_every_rule_of_the_library_is_placed():
    placed = {place.rule for place in _taxonomy.PLACES}
    assert placed == set(ep.rules), "a rule of ep.rules is missing from _taxonomy.PLACES (or one is unknown)"
    for place in _taxonomy.PLACES:
        ep.rules[place.rule].label(place.options)  # its options are the rule's own
        assert all(getattr(place, axis) for axis in _taxonomy.AXES)


MEASURED = ("bptt", "rtrl", "uoro", "snap(n=2)", "eprop")  # a few places keep the suite short


@pytest.fixture(scope="module")
def rows():
    places = tuple(place for place in _taxonomy.PLACES if place.label in MEASURED)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_taxonomy, "PLACES", places)
        return _taxonomy.measure(cells=("gru",), hidden=3, time_steps=6, batch=1, repeats=1, log=None)


def test_measure_table_and_figure(rows, tmp_path):
    by = {r["label"]: r for r in rows}
    assert list(by) == [place.label for place in _taxonomy.PLACES if place.label in MEASURED]
    for exact in ("bptt", "rtrl", "snap(n=2)"):  # SnAp-2 on a dense layer is RTRL
        assert by[exact]["cosine"] > 1 - 1e-5, (exact, by[exact]["cosine"])
    assert by["eprop"]["cosine"] < 1 - 1e-5  # e-prop drops the explicit recurrence
    for r in rows:
        assert (
            np.isfinite(r["cosine"])
            and r["ms_per_step"] > 0
            and r["memory"] in [row.memory for row in ep.rules[r["rule"]].rows]
        )
    assert by["snap(n=2)"]["memory"] == ep.rules["snap"].rows[1].memory  # its own row, not SnAp-1's
    text = _taxonomy.table(rows)  # the places not measured are left out of the table
    assert text.count("\n") == len(rows) + 1 and all(f"`{r['label']}`" in text for r in rows)
    pytest.importorskip("matplotlib")
    path = _taxonomy.plot(rows, str(tmp_path / "taxonomy.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_rules_all_is_an_option(monkeypatch, capsys, tmp_path):
    """The command line reaches ``_taxonomy.run`` with its sizes; measuring is replaced by the rows above."""
    seen = {}

    def fake_measure(**sizes):
        seen.update(sizes)
        return [
            dict(place._asdict(), cell="lif", cosine=1.0, rel_error=0.0, ms_per_step=0.1, peak_bytes=1024)
            for place in _taxonomy.PLACES
        ]

    monkeypatch.setattr(_taxonomy, "measure", fake_measure)
    argv = ["compare", "--rules", "all", "--hidden", "5", "--steps", "7", "--batch", "2", "--out", str(tmp_path)]
    assert _cli.main(argv) == 0
    assert seen == dict(hidden=5, time_steps=7, batch=2, seed=0, log=None)
    assert "| `uoro` |" in capsys.readouterr().out
    assert (tmp_path / "taxonomy.json").exists()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["compare", "--out", "somewhere"], "--out"),
        (["compare", "--rules", "all", "--no-rtrl"], "--no-rtrl"),
        (["compare", "--rules", "all", "--cell", "alif"], "--cell"),
        (["compare", "--rules", "all", "--layers", "3"], "--layers"),
        (["compare", "--rules", "some"], "--rules"),
    ],
)
def test_options_that_do_not_apply_are_refused(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "Traceback" not in err
