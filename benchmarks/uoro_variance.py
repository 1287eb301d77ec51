"""How noisy is UORO's gradient, and how much does the paper's variance-reducing scaling buy?

For each network (one recurrent layer of ``--hidden`` neurons, RNN with a stateless readout and LIF with a
leaky one, ``T = --steps``, batch 1, float64: the networks and task of ``eproptax bench``), UORO's gradient is
drawn from ``--keys`` keys (one jitted ``jax.vmap`` over keys), with the scaling ``rho0, rho1`` of Tallec and
Ollivier (2018) and without it (``rho0 = rho1 = 1``). Per variant it prints the total variance (the sum over
parameters of the variance across keys) divided by ``|g|^2``, ``g`` RTRL's exact gradient, the ratio of the
two variants' variances, the cosine of the mean estimate to ``g`` (1 for an unbiased estimate with enough
keys; ``1 / sqrt(1 + variance / keys)`` is what an unbiased estimate's mean is expected to reach, printed after
it), and the relative error of a single estimate, ``|g_k - g| / |g|`` averaged over the keys. It prints a
Markdown table and writes nothing.

    PYTHONPATH=. python benchmarks/uoro_variance.py [--quick] [--hidden 32] [--steps 50] [--keys 1000]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import eproptax as ep  # noqa: E402
from eproptax._bench import problem  # noqa: E402
from eproptax._engine import scan_rule  # noqa: E402
from eproptax._uoro import _online  # noqa: E402

NETWORKS = (("rnn", "stateless"), ("lif", "leaky"))


def flat(tree, lead: int = 0) -> np.ndarray:
    """The leaves of ``tree`` as one vector, or as ``(lead, -1)`` rows with a leading axis of ``lead``."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    return np.concatenate([leaf.reshape(lead, -1) if lead else leaf.ravel() for leaf in leaves], axis=-1)


def estimates(prob, scaled: bool, keys: int, seed: int) -> np.ndarray:
    """``(keys, |theta|)`` UORO gradients, scaled or not, from ``keys`` keys."""
    grad_fn = scan_rule("uoro", prob.model, prob.loss, _online(prob.model, prob.loss, None, scaled))
    fn = jax.jit(jax.vmap(lambda key: grad_fn(prob.params, prob.inputs, prob.targets, key=key)[1]))
    return flat(fn(jax.random.split(jax.random.key(seed), keys)), keys)


def summary(G: np.ndarray, exact: np.ndarray) -> dict:
    norm, mean = np.linalg.norm(exact), G.mean(0)
    variance = float(np.sum(G.var(0, ddof=1)) / norm**2)
    return dict(
        variance=variance,
        expected=float(1.0 / np.sqrt(1.0 + variance / G.shape[0])),
        cosine=float(mean @ exact / (np.linalg.norm(mean) * norm)),
        single=float(np.mean(np.linalg.norm(G - exact, axis=1)) / norm),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="hidden 16, T = 20, 200 keys (seconds)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.steps, args.keys = 16, 20, 200
    print(f"UORO, hidden {args.hidden}, T = {args.steps}, batch 1, {args.keys} keys, float64\n")
    print(
        "| network | variance / norm(g)^2, scaled | unscaled | ratio | cos(mean, g), scaled (if unbiased) "
        "| unscaled (if unbiased) "
        "| error of one estimate, scaled | unscaled | s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell, readout in NETWORKS:
        start = time.perf_counter()
        prob = problem(
            cell, readout=readout, hidden=args.hidden, time_steps=args.steps, batch=1, seed=args.seed, dtype=jnp.float64
        )
        exact = flat(jax.jit(ep.rtrl(prob.model, prob.loss))(prob.params, prob.inputs, prob.targets)[1])
        s, u = (summary(estimates(prob, scaled, args.keys, args.seed + 1), exact) for scaled in (True, False))
        print(
            f"| {cell} + {readout} | {s['variance']:.3g} | {u['variance']:.3g} | {s['variance'] / u['variance']:.3g} "
            f"| {s['cosine']:.3f} ({s['expected']:.3f}) | {u['cosine']:.3f} ({u['expected']:.3f}) "
            f"| {s['single']:.3g} | {u['single']:.3g} "
            f"| {time.perf_counter() - start:.0f} |"
        )


if __name__ == "__main__":
    main()
