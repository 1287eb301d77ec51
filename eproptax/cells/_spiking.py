"""Spiking cells: LIF and ALIF neurons as NEST's ``eprop_iaf(_adapt)_bsshslm_2020`` compute them."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hyper
from .._cell import Cell, make_cell
from ._connectivity import check_dale, check_mask, check_table, constrain, fan_in, to_dense
from ._surrogate import SURROGATES, spike_fn


class LIFState(NamedTuple):
    """State of a layer of LIF neurons.

    Attributes:
      v: membrane potentials relative to rest, shape ``(n,)``.
      refractory: steps during which each neuron is still blocked at this step (int32), shape ``(n,)``.
    """

    v: jax.Array
    refractory: jax.Array


class ALIFState(NamedTuple):
    """State of a layer of ALIF neurons: ``v`` and ``refractory`` as :class:`LIFState`, and ``a``,
    the threshold adaptation variable."""

    v: jax.Array
    a: jax.Array
    refractory: jax.Array


def _recurrent_init(n_in, n_rec, dtype, mask_in, mask_rec, dale, scale_rec):
    """``scale_rec``: the user's recurrent mask, whose fan-in sets the scale (the diagonal does not count)."""

    def init(key):
        k_in, k_rec = jax.random.split(key)
        w_in = jax.random.normal(k_in, (n_rec, n_in), dtype) / jnp.sqrt(fan_in(mask_in, n_in)).astype(dtype)
        w_rec = jax.random.normal(k_rec, (n_rec, n_rec), dtype) / jnp.sqrt(fan_in(scale_rec, n_rec)).astype(dtype)
        if dale is not None:  # stored as magnitudes: the cell's weight is dale * |w|
            w_rec = jnp.abs(w_rec)
        return {"w_in": constrain(w_in, mask_in), "w_rec": constrain(w_rec, mask_rec)}

    return init


def _recurrent_synapse(mask_in, mask_rec, dale):
    def synapse(params, x, z_prev):
        return (constrain(params["w_in"], mask_in) @ x + constrain(params["w_rec"], mask_rec, dale) @ z_prev)[:, None]

    return synapse


def _recurrent_masks(where, n_in, n_rec, autapses, mask_in, mask_rec, dale):
    """``(mask_in, mask_rec)`` checked, the recurrent one without the diagonal when ``autapses`` is off."""
    check_mask(where, "mask_in", mask_in, (n_rec, n_in))
    check_mask(where, "mask_rec", mask_rec, (n_rec, n_rec))
    check_dale(where, dale, n_rec)
    if not autapses:  # numpy where the mask is concrete: a constant even while a jit traces the cell's build
        off_diagonal = ~np.eye(n_rec, dtype=bool)
        if mask_rec is None:
            mask_rec = off_diagonal
        else:
            mask_rec = (jnp.asarray if _hyper.is_traced(mask_rec) else np.asarray)(mask_rec) & off_diagonal
    return mask_in, mask_rec


def _compressed(where, n_in, n_rec, dtype, autapses, pre_in, pre_rec, dale):
    """``(init, synapse, synapses)`` of a layer storing its weights per synapse: ``w_in`` ``(n_rec, K_in)``
    and ``w_rec`` ``(n_rec, K_rec)`` in the order of the index tables ``pre_in`` and ``pre_rec``."""
    check_table(where, "pre_in", pre_in, n_rec, n_in)
    check_table(where, "pre_rec", pre_rec, n_rec, n_rec, autapses)
    check_dale(where, dale, n_rec)
    pre_in, pre_rec = jnp.asarray(pre_in, jnp.int32), jnp.asarray(pre_rec, jnp.int32)

    def init(key):
        k_in, k_rec = jax.random.split(key)
        shapes = (pre_in.shape, pre_rec.shape)
        w_in, w_rec = (
            jax.random.normal(k, shape, dtype) / max(shape[1], 1) ** 0.5 for k, shape in zip((k_in, k_rec), shapes)
        )
        return {"w_in": w_in, "w_rec": jnp.abs(w_rec) if dale is not None else w_rec}

    def weights(params):  # (n_rec, 1, K_in + K_rec): the synapses' weights in the order of `pre`
        w_rec = params["w_rec"]
        if dale is not None:
            w_rec = jnp.abs(w_rec) * jnp.asarray(dale, w_rec.dtype)[pre_rec]
        return jnp.concatenate([params["w_in"], w_rec], axis=1)[:, None, :]

    def synapse(params, x, z_prev):  # the dense view times v: a matrix product (the scatter is loop-invariant)
        w = weights(params)[:, 0]
        k_in = pre_in.shape[1]
        return (to_dense(w[:, :k_in], pre_in, n_in) @ x + to_dense(w[:, k_in:], pre_rec, n_rec) @ z_prev)[:, None]

    return init, synapse, (jnp.concatenate([pre_in, pre_rec + n_in], axis=1), weights)


def _connections(where, n_in, n_rec, dtype, autapses, mask_in, mask_rec, pre_in, pre_rec, dale):
    """The keyword arguments ``init``, ``synapse`` and ``synapses`` of :func:`make_cell` for a layer's dense
    (maybe masked) or compressed (index tables) weights."""
    if pre_in is None and pre_rec is None:
        masks = _recurrent_masks(where, n_in, n_rec, autapses, mask_in, mask_rec, dale)
        return dict(
            init=_recurrent_init(n_in, n_rec, dtype, *masks, dale, mask_rec), synapse=_recurrent_synapse(*masks, dale)
        )
    if pre_in is None or pre_rec is None:
        raise ValueError(
            f"{where}: a compressed layer needs both index tables, `pre_in` and `pre_rec` (got only "
            f"`{'pre_in' if pre_rec is None else 'pre_rec'}`); draw a full one with fan_in_indices(key, shape, n_pre)."
        )
    if mask_in is not None or mask_rec is not None:
        raise ValueError(
            f"{where}: give either masks (`mask_in`, `mask_rec`) or index tables (`pre_in`, `pre_rec`), not both."
        )
    init, synapse, synapses = _compressed(where, n_in, n_rec, dtype, autapses, pre_in, pre_rec, dale)
    return dict(init=init, synapse=synapse, synapses=synapses)


def _refractory_counter(z_prev, refractory_prev, n_refractory):
    # NEST: r <- max(r - 1, 0) at the start of a step, r = t_ref / dt after a spike. A counter of
    # n_refractory + 1 set at the spike blocks exactly the n_refractory following steps.
    r = jnp.where(z_prev > 0, n_refractory + 1, refractory_prev)
    return jnp.maximum(r - 1, 0).astype(jnp.int32)


def _check_neuron(where, args):
    """The hyperparameters of :func:`lif` and :func:`alif` (``args``: the factory's arguments by name); a traced
    value is skipped and an array is checked in every entry (see ``_hyper``)."""
    for name in ("n_in", "n_rec"):
        _hyper.positive_int(where, name, args[name])
    for name in ("tau_mem", "tau_adapt", "dt", "threshold", "surrogate_height", "surrogate_width"):
        if args.get(name) is not None:
            _hyper.positive(where, name, args[name])
    if args["zeta"] is not None:
        _hyper.finite(where, "zeta", args["zeta"])
    if args.get("beta") is not None:
        _hyper.non_negative(where, "beta", args["beta"])
    _hyper.non_negative_int(where, "n_refractory", args["n_refractory"])
    _hyper.boolean(where, "detach_reset", args["detach_reset"])
    _hyper.boolean(where, "autapses", args["autapses"])
    _hyper.one_of(where, "surrogate", args["surrogate"], SURROGATES)
    _hyper.floating_dtype(where, "dtype", args["dtype"])


def lif(
    n_in: int,
    n_rec: int,
    *,
    tau_mem=20.0,
    threshold=0.03,
    dt=1.0,
    zeta=None,
    n_refractory=0,
    detach_reset: bool = True,
    autapses: bool = False,
    mask_in=None,
    mask_rec=None,
    dale=None,
    pre_in=None,
    pre_rec=None,
    surrogate: str = "piecewise_linear",
    surrogate_height=10.0,
    surrogate_width=None,
    dtype=jnp.float32,
) -> Cell:
    """A layer of recurrent leaky integrate-and-fire neurons (e-prop's LIF, NEST's ``eprop_iaf_bsshslm_2020``).

    With ``alpha = exp(-dt / tau_mem)`` and ``zeta = 1 - alpha`` by default, at each step ``t``::

      I_j^t   = sum_i w_in[j, i] x_i^t + sum_i w_rec[j, i] z_i^{t-1}
      v_j^t   = alpha v_j^{t-1} + zeta I_j^t - threshold z_j^{t-1}      (subtractive reset, one step later)
      z_j^t   = H(v_j^t - threshold)   unless neuron j is refractory at step t
      psi_j^t = dz_j^t/dv_j^t = surrogate_height * psi((v_j^t - threshold) / surrogate_width), 0 if refractory

    The reset term is detached from the gradient by default (``detach_reset=True``), as in NEST and in
    Bellec et al.'s experiments; the cell then declares ``leak = (alpha, zeta)``, which lets e-prop keep
    factorised traces. ``n_refractory`` is the number of steps blocked after a spike: NEST's
    ``t_ref = n * dt`` blocks ``n - 1`` steps, so it maps to ``n_refractory = n - 1`` (``t_ref = 0`` or
    ``dt`` block none). ``zeta = 1`` reproduces NEST's ``regular_spike_arrival = True``. With
    ``autapses=False`` (the default, as in NEST's and Bellec et al.'s networks) the diagonal of ``w_rec``
    is masked in the synapse, so it has no effect and gets a zero gradient.

    Sparse and sign-constrained connectivity (docs/cells.md): ``mask_in`` and ``mask_rec`` are boolean
    ``(n_rec, n_in)`` and ``(n_rec, n_rec)`` masks (post x pre, as the weights; draw them with
    :func:`bernoulli_mask` or :func:`fan_in_mask`). A masked-out weight is multiplied by zero in the synapse:
    no effect, exactly zero gradient under every rule, stored as zero by ``init``, whose scale is
    ``1 / sqrt`` of the mean fan-in. ``dale`` holds one sign (+1 excitatory, -1 inhibitory) per
    presynaptic recurrent neuron (:func:`dale_signs`); the recurrent weight the cell uses is then
    ``dale[i] * |w_rec[j, i]|``, so the signs hold under every rule and optimizer, and ``params["w_rec"]``
    holds the magnitudes (a weight driven across zero comes back with its own sign).

    Compressed weights (a fixed fan-in; docs/cells.md): with index tables ``pre_in`` ``(n_rec, K_in)`` and
    ``pre_rec`` ``(n_rec, K_rec)`` instead of masks, ``params["w_in"]`` and ``params["w_rec"]`` hold only the
    synapses, ``(n_rec, K_in)`` and ``(n_rec, K_rec)`` in the order of the tables (drawn with scale
    ``1 / sqrt(K)``), and the cell declares them (``Cell.synapses``), so e-prop's traces and gradients never
    take an ``(n_rec, n_in + n_rec)`` array; :func:`to_dense` and :func:`to_compressed` map parameters and
    gradients to the masked cell's dense view and back. The tables may be traced values (Deep R rewires
    them without a new compilation: :func:`~eproptax.deep_r`).

    Every hyperparameter may be a traced JAX value, so ``jax.vmap`` over, say, ``tau_mem`` works when the
    cell is built inside the vmapped function.

    The hyperparameters are checked when the cell is built (a ``ValueError`` names the argument, the range
    and the value); a traced value is not checked, and a concrete array is checked in every entry.

    Args:
      n_in: number of inputs, a positive int.
      n_rec: number of neurons, a positive int.
      tau_mem: membrane time constant (same unit as ``dt``), finite and ``> 0``; a scalar or one per neuron.
      threshold: spike threshold ``V_th`` (relative to rest), finite and ``> 0``.
      dt: time step, finite and ``> 0``.
      zeta: input gain, finite; ``None`` means ``1 - alpha``.
      n_refractory: steps blocked after each spike, an int ``>= 0``.
      detach_reset: whether the reset term is excluded from the gradient (a bool).
      autapses: whether neurons connect to themselves (a bool).
      mask_in: ``None`` (all-to-all) or a boolean ``(n_rec, n_in)`` mask of the input synapses.
      mask_rec: ``None`` or a boolean ``(n_rec, n_rec)`` mask of the recurrent synapses (the diagonal also
        masked when ``autapses`` is off).
      dale: ``None`` or ``(n_rec,)`` signs, +1 or -1, one per presynaptic recurrent neuron.
      pre_in: ``None`` or an int ``(n_rec, K_in)`` index table of each neuron's input partners
        (:func:`fan_in_indices`); with ``pre_rec``, the weights are stored compressed (see above).
      pre_rec: ``None`` or an int ``(n_rec, K_rec)`` index table of each neuron's recurrent partners (no
        neuron its own partner while ``autapses`` is off).
      surrogate: ``"piecewise_linear"``, ``"exponential"``, ``"fast_sigmoid"`` or ``"arctan"``.
      surrogate_height: the pseudo-derivative's height (NEST's ``surrogate_gradient_height``), finite and ``> 0``.
      surrogate_width: the pseudo-derivative's width in voltage, finite and ``> 0``; ``None`` means ``threshold``.
      dtype: floating dtype of the parameters that ``init`` draws.

    Returns:
      A neuron :class:`Cell` with params ``{"w_in": (n_rec, n_in), "w_rec": (n_rec, n_rec)}`` (post x
      pre, as NEST; ``(n_rec, K_in)`` and ``(n_rec, K_rec)`` with index tables) and carry :class:`LIFState`.
    """
    _check_neuron("lif", locals())  # first: locals() holds the arguments only
    connections = _connections("lif", n_in, n_rec, dtype, autapses, mask_in, mask_rec, pre_in, pre_rec, dale)
    spike = spike_fn(surrogate)
    alpha = jnp.exp(-dt / jnp.asarray(tau_mem))
    gain = 1.0 - alpha if zeta is None else zeta
    width = threshold if surrogate_width is None else surrogate_width

    def output(h):
        return spike(h.v - threshold, surrogate_height, width) * (h.refractory == 0).astype(h.v.dtype)

    def dynamics(h, a):
        z_prev = output(h)
        reset = jax.lax.stop_gradient(z_prev) if detach_reset else z_prev
        v = alpha * h.v + gain * a[:, 0] - threshold * reset
        return LIFState(v.astype(h.v.dtype), _refractory_counter(z_prev, h.refractory, n_refractory))

    def init_carry(params):
        dt_ = params["w_in"].dtype
        return LIFState(jnp.zeros(n_rec, dt_), jnp.zeros(n_rec, jnp.int32))

    return make_cell(
        n_in=n_in,
        n_out=n_rec,
        init_carry=init_carry,
        **connections,
        dynamics=dynamics,
        output=output,
        leak=(alpha, gain) if detach_reset else None,
    )


def alif(
    n_in: int,
    n_rec: int,
    *,
    tau_mem=20.0,
    tau_adapt=2000.0,
    beta=None,
    threshold=0.03,
    dt=1.0,
    zeta=None,
    n_refractory=0,
    detach_reset: bool = True,
    autapses: bool = False,
    mask_in=None,
    mask_rec=None,
    dale=None,
    pre_in=None,
    pre_rec=None,
    surrogate: str = "piecewise_linear",
    surrogate_height=10.0,
    surrogate_width=None,
    dtype=jnp.float32,
) -> Cell:
    """A layer of adaptive LIF neurons (e-prop's ALIF, NEST's ``eprop_iaf_adapt_bsshslm_2020``).

    As :func:`lif`, with ``rho = exp(-dt / tau_adapt)`` and an adaptive threshold::

      a_j^t   = rho a_j^{t-1} + z_j^{t-1}
      A_j^t   = threshold + beta a_j^t
      v_j^t   = alpha v_j^{t-1} + zeta I_j^t - threshold z_j^{t-1}       (reset by the base threshold, as NEST)
      z_j^t   = H(v_j^t - A_j^t)   unless refractory;   psi_j^t uses (v_j^t - A_j^t) / surrogate_width

    ``beta`` follows NEST (``adapt_beta``). Bellec et al.'s code integrates ``a^t = rho a^{t-1} + (1 - rho)
    z^{t-1}``, so their ``beta_B`` corresponds to ``beta = beta_B * (1 - rho)`` here. The default ``None``
    is Bellec et al.'s ``beta_B = 1.7`` in this convention, ``1.7 * (1 - rho)`` (about ``8.5e-4`` with
    ``tau_adapt = 2000`` steps). Only the reset term
    is detached (``detach_reset``); the adaptation keeps its derivative through the neuron's own previous
    spike, which is the implicit recurrence behind e-prop's two-component ALIF trace. With the reset detached
    the membrane is a leaky integrator of the input and the cell declares ``leak = ((alpha, zeta), None)``:
    e-prop keeps the membrane's trace as the presynaptic ``zbar`` (Bellec et al.'s ``epsilon^v``) and only
    the adaptation's trace per synapse.

    Args:
      tau_adapt: the adaptation's time constant (same unit as ``dt``), finite and ``> 0``.
      beta: the adaptation strength, finite and ``>= 0`` (a scalar or one per neuron; ``0`` makes a neuron a
        LIF neuron). A negative ``beta`` would lower the threshold after each spike, a positive feedback that
        neither NEST (``adapt_beta >= 0``) nor Bellec et al. use, and is refused. ``None``: the default above.
      n_in, n_rec, tau_mem, threshold, dt, zeta, n_refractory, detach_reset, autapses, mask_in, mask_rec,
        dale, pre_in, pre_rec, surrogate, surrogate_height, surrogate_width, dtype: as in :func:`lif`, with
        the same ranges.

    Returns:
      A neuron :class:`Cell` with the params of :func:`lif` and carry :class:`ALIFState`.
    """
    _check_neuron("alif", locals())  # first: locals() holds the arguments only
    connections = _connections("alif", n_in, n_rec, dtype, autapses, mask_in, mask_rec, pre_in, pre_rec, dale)
    spike = spike_fn(surrogate)
    alpha = jnp.exp(-dt / jnp.asarray(tau_mem))
    rho = jnp.exp(-dt / jnp.asarray(tau_adapt))
    beta = 1.7 * (1.0 - rho) if beta is None else beta
    gain = 1.0 - alpha if zeta is None else zeta
    width = threshold if surrogate_width is None else surrogate_width

    def output(h):
        a_threshold = threshold + beta * h.a
        return spike(h.v - a_threshold, surrogate_height, width) * (h.refractory == 0).astype(h.v.dtype)

    def dynamics(h, a):
        z_prev = output(h)
        reset = jax.lax.stop_gradient(z_prev) if detach_reset else z_prev
        v = alpha * h.v + gain * a[:, 0] - threshold * reset
        adapt = rho * h.a + z_prev
        return ALIFState(
            v.astype(h.v.dtype), adapt.astype(h.a.dtype), _refractory_counter(z_prev, h.refractory, n_refractory)
        )

    def init_carry(params):
        dt_ = params["w_in"].dtype
        return ALIFState(jnp.zeros(n_rec, dt_), jnp.zeros(n_rec, dt_), jnp.zeros(n_rec, jnp.int32))

    return make_cell(
        n_in=n_in,
        n_out=n_rec,
        init_carry=init_carry,
        **connections,
        dynamics=dynamics,
        output=output,
        leak=((alpha, gain), None) if detach_reset else None,
    )
