"""The registry of rules: one :class:`RuleInfo` per rule, in one place.

``eproptax compare``, ``eproptax bench``, ``eproptax train`` (its ``--rule`` choices and rule options),
``ep.train`` (a rule given by name) and the README's table of rules (:func:`table`) all read
:data:`RULES`, so a new rule is registered by adding one entry here (and re-exporting its factories as
``ep.<name>`` and ``ep.online.<name>``; ``tests/test_registry.py`` checks both, and the README's table).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from ._bptt import bptt
from ._deep_eprop import DEPTHS, deep_eprop, online_deep_eprop
from ._eprop import eprop, online_eprop
from ._eprop_m import eprop_m, online_eprop_m
from ._kf_rtrl import kf_rtrl, online_kf_rtrl
from ._pp_prop import online_pp_prop, pp_prop
from ._rtrl import online_rtrl, rtrl
from ._snap import online_snap, snap
from ._tbptt import online_tbptt, tbptt
from ._uoro import online_uoro, uoro

_NONE: Mapping = types.MappingProxyType({})


class Option(NamedTuple):
    """A rule-specific keyword option, as :func:`make_rule` and ``eproptax train`` give it.

    Attributes:
      name: the keyword (``"order"``), also the command line's flag (``--order``).
      default: the value :func:`make_rule` and ``eproptax train`` use when none is given.
      type: the command line's parser for a value (``int``, ``str``).
      choices: the valid values, or ``None`` for any value the rule accepts.
      help: what it means, for the command line's help.
    """

    name: str
    default: Any
    type: Callable = int
    choices: tuple | None = None
    help: str = ""


class Row(NamedTuple):
    """One row of the README's table of rules: the call's arguments after ``model, loss`` and its columns."""

    arguments: str
    gradient: str
    memory: str
    time: str


class RuleInfo(NamedTuple):
    """Everything the library's tools need to know about one rule.

    Attributes:
      name: the rule's name, also ``ep.<name>`` and (with an online form) ``ep.online.<name>``.
      grad_fn: the whole-sequence factory ``(model, loss, **options) -> grad_fn``.
      online: the online factory ``(model, loss, **options) -> OnlineRule``, or ``None`` (BPTT).
      options: the rule-specific keyword options (:class:`Option`), with their defaults.
      feedback: whether it takes ``feedback=`` (a learning signal through ``B``).
      chunk: whether its whole-sequence form takes ``chunk=``.
      rows: its rows of the README's table of rules, the default form first (deep e-prop has one per depth).
      random: whether it draws noise: its ``grad_fn`` needs ``key=`` (and its online ``init``).
    """

    name: str
    grad_fn: Callable
    online: Callable | None
    options: tuple[Option, ...]
    feedback: bool
    chunk: bool
    rows: tuple[Row, ...]
    random: bool = False

    @property
    def online_form(self) -> bool:
        """Whether the rule has a per-step form under ``ep.online``."""
        return self.online is not None

    @property
    def gradient(self) -> str:
        """Exact or approximate, and what it drops (its default form's row of the table)."""
        return self.rows[0].gradient

    @property
    def memory(self) -> str:
        """Memory per example and step (its default form's row of the table)."""
        return self.rows[0].memory

    @property
    def time(self) -> str:
        """Time per example and step (its default form's row of the table)."""
        return self.rows[0].time

    @property
    def defaults(self) -> dict:
        """``{option: default}`` for the rule-specific options."""
        return {option.name: option.default for option in self.options}

    def keywords(self, *, online: bool = False) -> tuple[str, ...]:
        """Every keyword :func:`make_rule` accepts for this rule (its whole-sequence form, or its online form)."""
        shared = ("feedback", "reg") if self.feedback else ("reg",)
        if not online:
            shared += ("unroll", "chunk") if self.chunk else ("unroll",)
        return tuple(option.name for option in self.options) + shared

    def label(self, options: Mapping = _NONE, *, keys: bool = True) -> str:
        """A display name: ``"eprop_m(order=1)"``, or ``"eprop_m(1)"`` with ``keys=False``.

        Only the rule-specific options given in ``options`` appear, in the registry's order; other keywords
        (``feedback``, ``reg``, ...) are ignored, and with none the name is bare (``"eprop"``).
        """
        shown = [(o.name, options[o.name]) for o in self.options if o.name in options]
        if not shown:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' if keys else f'{v}' for k, v in shown)})"


_ORDER = "explicit recurrent edges kept"
_ORDER_M = Option("order", 1, int, None, _ORDER)
_ORDER_DEEP = Option("order", 0, int, None, _ORDER)
_DEPTH = Option("depth", "full", str, DEPTHS, "treatment across layers")
_SNAP_N = Option("n", 1, int, None, "steps the influence's sparsity pattern reaches (SnAp-n)")
_DECAY = Option("decay", None, float, None, "decay of both pp-prop traces (default: the membrane's, and 0)")
_WINDOW = Option("window", 16, int, None, "steps of a truncation window")

RULES: Mapping[str, RuleInfo] = types.MappingProxyType(
    {
        info.name: info
        for info in (
            RuleInfo(
                "bptt",
                bptt,
                None,
                (),
                feedback=False,
                chunk=False,
                rows=(Row("", "exact", "`O(T n s)` states", "`O(|theta|)` (forward + backward)"),),
            ),
            RuleInfo(
                "rtrl",
                rtrl,
                online_rtrl,
                (),
                feedback=False,
                chunk=False,
                rows=(
                    Row(
                        "",
                        "exact",
                        "`O(n s |theta|)` influence matrix",
                        "`O((n s)^2 |theta|)` (one matrix product), i.e. `O(n^4)`",
                    ),
                ),
            ),
            RuleInfo(
                "eprop",
                eprop,
                online_eprop,
                (),
                feedback=True,
                chunk=True,
                rows=(
                    Row(
                        "",
                        "approximate: drops the explicit recurrence",
                        "`O(s |theta|)` traces (`s` counting only the state variables `dynamics` reads and the cell"
                        " does not declare leaky: an LSTM's `c`, not its `h`; an ALIF's adaptation, not its"
                        " membrane); `O(m)` when the trace factorises (LIF, stateless readout); `+O(|theta|)` under"
                        " a leaky readout",
                        "`O(s^2 |theta|)`",
                    ),
                ),
            ),
            RuleInfo(
                "eprop_m",
                eprop_m,
                online_eprop_m,
                (_ORDER_M,),
                feedback=True,
                chunk=True,
                rows=(
                    Row(
                        "order",
                        "approximate; exact for `order >= T - 1`",
                        "`O(s |theta| + order n s |theta|)`",
                        "`O(order n^2 k |theta|)`, like RTRL per level",
                    ),
                ),
            ),
            RuleInfo(
                "deep_eprop",
                deep_eprop,
                online_deep_eprop,
                (_DEPTH, _ORDER_DEEP),
                feedback=True,
                chunk=True,
                rows=(
                    Row(
                        'depth="full"',
                        "approximate across depth; exact with no within-layer recurrence",
                        "`sum_{l >= p} n_l s_l |theta^p|`",
                        "`O(sum_{l > p} n_l k_l n_{l-1} |theta^p|)`",
                    ),
                    Row(
                        'depth="collapsed"',
                        "between spatial and full; exact through linear leaky layers",
                        "`O(|theta^p|)` per leaky layer above `p`",
                        "as `eprop`, plus one scalar filter per leaky layer",
                    ),
                    Row('depth="spatial"', "as `eprop` on a stack", "as `eprop`", "as `eprop`"),
                ),
            ),
            RuleInfo(
                "snap",
                snap,
                online_snap,
                (_SNAP_N,),
                feedback=True,
                chunk=True,
                rows=(
                    Row(
                        "n=1",
                        "approximate: drops the explicit recurrence between distinct neurons (SnAp-1, D-RTRL: "
                        "e-prop plus each neuron's autapse)",
                        "`O(s |theta|)` traces, every state variable",
                        "`O(s^2 |theta|)`",
                    ),
                    Row(
                        "n=2",
                        "approximate: drops the influence outside what the one-step pattern reaches in `n` steps;"
                        " exact when that is dense (a dense recurrent layer)",
                        "`O(r |theta|)`, `r` the state variables one neuron reaches (`n s`, as `rtrl`, when dense)",
                        "`O(r^2 |theta|)`",
                    ),
                ),
            ),
            RuleInfo(
                "pp_prop",
                pp_prop,
                online_pp_prop,
                (_DECAY,),
                feedback=True,
                chunk=True,
                rows=(
                    Row(
                        "",
                        "approximate: e-prop's trace as an outer product of a post- and a presynaptic trace; e-prop"
                        " where that trace factorises (LIF, stateless readout), same-step signal under a leaky readout",
                        "`O(m + n s k)` per layer",
                        "`O(|theta|)` (one outer product)",
                    ),
                ),
            ),
            RuleInfo(
                "tbptt",
                tbptt,
                online_tbptt,
                (_WINDOW,),
                feedback=False,
                chunk=False,
                rows=(
                    Row(
                        "window=K",
                        "approximate: drops every path through the state at a window's start; exact for `K >= T`",
                        "`O(K n s)` states (flat in `T`)",
                        "`O(|theta|)` (forward + backward), about 3 forward steps",
                    ),
                ),
            ),
            RuleInfo(
                "uoro",
                uoro,
                online_uoro,
                (),
                feedback=False,
                chunk=False,
                rows=(
                    Row(
                        "",
                        "unbiased: its mean over keys is exact; one estimate is a random rank-one influence",
                        "`O(n s + |theta|)`",
                        "`O(|theta|)`, about 3 forward steps",
                    ),
                ),
                random=True,
            ),
            RuleInfo(
                "kf_rtrl",
                kf_rtrl,
                online_kf_rtrl,
                (),
                feedback=False,
                chunk=False,
                rows=(
                    Row(
                        "",
                        "unbiased on one recurrent layer under a stateless readout (its mean over keys is RTRL's); one"
                        " estimate is a random Kronecker product; on stacks, each layer's own influence only",
                        "`O(m + n^2 s k)` per layer",
                        "`O(n^3 k^2)` (`n k` tangents through the step)",
                    ),
                ),
                random=True,
            ),
        )
    }
)
"""Every rule of the library, by name, in the order of the README's table (read-only); ``ep.rules``."""
rules = RULES  # the public name, ``ep.rules``


def _names(names) -> str:
    return ", ".join(repr(name) for name in names) or "none"


def make_rule(name: str, model, loss, *, online: bool = False, **options):
    """Builds the rule ``name`` for ``model`` and ``loss``: ``ep.make_rule("eprop_m", model, loss, order=2)``.

    The rule-specific options (:attr:`RuleInfo.options`) not given take their registry defaults (``order=1``
    for ``eprop_m``; ``depth="full"``, ``order=0`` for ``deep_eprop``, the factories' own defaults); the
    other keywords (``feedback``, ``reg``, ``unroll``, ``chunk``) go to the factory as given.

    Args:
      name: a key of ``ep.rules``: ``"bptt"``, ``"rtrl"``, ``"eprop"``, ``"eprop_m"``, ``"deep_eprop"``,
        ``"snap"``, ``"pp_prop"``, ``"tbptt"``, ``"uoro"``, ``"kf_rtrl"``.
      model: a :class:`~eproptax.Cell`.
      loss: ``loss(outputs_t, targets_t) -> scalar`` for one example and one step.
      online: build the per-step :class:`~eproptax.OnlineRule` (``ep.online.<name>``) instead of the
        whole-sequence ``grad_fn``.
      **options: keyword options of the rule (``RULES[name].keywords(online=online)``).

    Returns:
      ``grad_fn(params, inputs, targets) -> (loss, grads)``, or the :class:`~eproptax.OnlineRule`.

    Raises:
      ValueError: for an unknown ``name``, a rule without an online form with ``online=True``, an option the
        rule does not take, or a value outside an option's choices.

    Example::

      grad_fn = ep.make_rule("deep_eprop", model, loss, depth="spatial")  # ep.deep_eprop(model, loss, depth=...)
    """
    if not isinstance(name, str) or name not in RULES:
        raise ValueError(f"make_rule: `name` must be one of {_names(RULES)}, got {name!r}.")
    info = RULES[name]
    if online and not info.online_form:
        with_online = [n for n, i in RULES.items() if i.online_form]
        raise ValueError(
            f"make_rule: `online=True` needs a rule with an online form ({_names(with_online)}), got {name!r}, "
            f"which needs the whole sequence; build it with online=False."
        )
    accepted = info.keywords(online=online)
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(
                f"make_rule: {name}{' (online)' if online else ''} takes no option `{key}`: expected one of "
                f"{_names(accepted)}, got {key}={value!r}."
            )
    for option in info.options:
        value = options.setdefault(option.name, option.default)
        if option.choices is not None and value not in option.choices:
            raise ValueError(
                f"make_rule: {name}'s `{option.name}` must be one of {_names(option.choices)}, got {value!r}."
            )
    return (info.online if online else info.grad_fn)(model, loss, **options)


def keyed(info: RuleInfo, grad_fn, key=None):
    """``grad_fn`` as ``(params, inputs, targets) -> (loss, grads)``: for a rule that draws noise
    (:attr:`RuleInfo.random`), with ``key`` (default ``jax.random.key(0)``) bound; any other as it is. The
    command line's ``compare`` and ``bench`` measure such a rule at one key."""
    if not info.random:
        return grad_fn
    return functools.partial(grad_fn, key=jax.random.key(0) if key is None else key)


def table() -> str:
    """The README's table of rules (Markdown), one row per :class:`Row` of every rule, in registry order."""
    lines = ["| rule | gradient | online | memory | time per step |", "| --- | --- | --- | --- | --- |"]
    for info in RULES.values():
        for row in info.rows:
            call = f"ep.{info.name}(model, loss{', ' + row.arguments if row.arguments else ''})"
            online = "yes" if info.online_form else "no"
            lines.append(f"| `{call}` | {row.gradient} | {online} | {row.memory} | {row.time} |")
    return "\n".join(lines)
