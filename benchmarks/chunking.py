"""Would e-prop's per-synapse traces run faster K steps at a time? The trace kernel alone, per step and chunked.

Question: the per-synapse trace update and the gradient's ``g += L e`` are two passes over the trace every
step, bound by memory bandwidth (``targets.py``, target 3). The same arithmetic can be regrouped, exactly,
into one pass every K steps plus two matrix products; does that pay on this machine, and from which K?

For one state variable per neuron (a GRU's or a tanh RNN's ``h``), with ``D_t`` the implicit recurrence,
``f_t`` the gate coefficients ``dh/da``, ``v_t`` the presynaptic vector and ``L_t`` the learning signal::

    per step:  e_t = D_t e_{t-1} + f_t v_t ;   g += L_t e_t
    chunked:   e_K = P_0 e_0 + sum_t (P_t f_t) v_t ;   g += Lam_0 e_0 + sum_t (lam_t f_t) v_t

with ``P_t = D_K ... D_{t+1}`` and ``lam_t = L_t + D_{t+1} lam_{t+1}`` (``lam_K = L_K``), found by a backward
recursion over the chunk's K steps at neuron size, ``P_0 = P_1 D_1`` and ``Lam_0 = lam_1 D_1``. The two sums
over ``t`` are matrix products with a ``B K``-deep contraction. Both kernels run in a ``lax.scan`` on
random coefficients, laid out as the library lays out a GRU's level-0 trace with a stateless readout
(``(n, B, k, m)``, ``k = 4``, ``m = n_in + n + 1``); the chunked one is first checked against the per-step
one in float64. This measures the kernel only, not a rule: the library steps one time step at a time
(benchmarks/README.md, "What binds now (tenth session)"). Writes ``chunking.json``.

    python benchmarks/chunking.py
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, save  # noqa: E402

from eproptax._bench import _best_times  # noqa: E402


def coefficients(n, batch, m, T, dtype, seed=0):
    """Random ``(D, f, v, L)`` for ``T`` steps: ``D`` in (0, 1), as for a GRU."""
    k_d, k_f, k_v, k_l = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.uniform(k_d, (T, batch, n), dtype), jax.random.normal(k_f, (T, batch, n, 4), dtype),
            jax.random.normal(k_v, (T, batch, m), dtype), jax.random.normal(k_l, (T, batch, n), dtype))


def per_step(e, g, D, f, v, L):
    e = D.T[:, :, None, None] * e + jnp.swapaxes(f, 0, 1)[..., None] * v[None, :, None, :]
    return e, g + jnp.einsum("bj,jbgi->jgi", L, e)


def chunk(e, g, D, f, v, L):
    """K steps at once: ``D, L`` ``(K, B, n)``, ``f`` ``(K, B, n, 4)``, ``v`` ``(K, B, m)``."""
    d_next = jnp.concatenate([D[1:], jnp.ones_like(D[:1])])  # D_{t+1}, 1 past the chunk's end

    def back(carry, x):
        P, lam = carry
        dn, l_t = x
        P, lam = P * dn, l_t + dn * lam
        return (P, lam), (P, lam)

    _, (P, lam) = lax.scan(back, (jnp.ones_like(D[0]), jnp.zeros_like(D[0])), (d_next, L), reverse=True)
    g = g + jnp.einsum("bj,jbgi->jgi", lam[0] * D[0], e) + jnp.einsum("tbjg,tbi->jgi", lam[..., None] * f, v)
    e = (P[0] * D[0]).T[:, :, None, None] * e + jnp.einsum("tbjg,tbi->jbgi", P[..., None] * f, v)
    return e, g


def kernel(n, batch, m, K, dtype):
    """The whole-sequence kernel: ``xs -> g``, per step (``K = 1``) or chunked."""
    def run(xs):
        zeros = (jnp.zeros((n, batch, 4, m), dtype), jnp.zeros((n, 4, m), dtype))
        if K == 1:
            body, xs_ = (lambda c, x: (per_step(*c, *x), None)), xs
        else:
            body = lambda c, x: (chunk(*c, *x), None)
            xs_ = jax.tree_util.tree_map(lambda a: a.reshape((a.shape[0] // K, K) + a.shape[1:]), xs)
        return lax.scan(body, zeros, xs_)[0][1]
    return jax.jit(run)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with jax.enable_x64(True):  # exactness first, in float64, on a small problem
        xs = coefficients(6, 3, 11, 64, jnp.float64)
        ref = kernel(6, 3, 11, 1, jnp.float64)(xs)
        errors = {K: float(jnp.max(jnp.abs(kernel(6, 3, 11, K, jnp.float64)(xs) - ref)) / jnp.max(jnp.abs(ref)))
                  for K in args.chunks}
    print("float64, largest difference to the per-step kernel, relative: "
          + ", ".join(f"K={K} {err:.1e}" for K, err in errors.items()))
    if max(errors.values()) > 1e-12:
        raise SystemExit("the chunked kernel does not reproduce the per-step one: nothing to time")
    sizes = ((32, 1), (128, 1), (32, 8), (128, 8)) if args.quick else ((32, 1), (128, 1), (32, 8), (128, 8), (256, 32))
    rows = []
    for n, batch in sizes:
        T = 2 * max(args.chunks) if n * batch > 2048 else 8 * max(args.chunks)
        xs = coefficients(n, batch, 16 + n + 1, T, jnp.float32)
        fns = {K: kernel(n, batch, 16 + n + 1, K, jnp.float32) for K in [1] + args.chunks}
        for fn in fns.values():
            jax.block_until_ready(fn(xs))
        best = {K: float("inf") for K in fns}
        for _ in range(args.rounds):  # interleaved rounds, each keeping its minimum
            for K, fn in fns.items():
                best[K] = min(best[K], _best_times(fn, xs, repeats=3)[0])
        row = dict(hidden=n, batch=batch, k=4, m=16 + n + 1, T=T, per_step_s={K: best[K] / T for K in best},
                   speedup={K: best[1] / best[K] for K in args.chunks})
        rows.append(row)
        print(f"n={n:4d} B={batch:3d}: per step {1e6 * best[1] / T:8.2f} us/step; chunked "
              + ", ".join(f"K={K} x{row['speedup'][K]:.2f}" for K in args.chunks))
    print("wrote", save("chunking", dict(rows=rows, float64_relative_error=errors), args.out))


if __name__ == "__main__":
    main()
