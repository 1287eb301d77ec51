"""Saving and restoring an online rule's state as a plain ``.npz``, bit for bit."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The format's version. 2: an OnlineState may hold a random key (``.key``, stored as its key data); a state
# without one has the leaves of version 1, so files of either version load.
_FORMAT = "eproptax.online_state/2"
_READS = ("eproptax.online_state/1", _FORMAT)
_META = "__eproptax__"


def _is_key(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _raw(leaf) -> np.ndarray:
    """The leaf's bits as a numpy array of a dtype that ``np.save`` stores natively."""
    arr = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    if arr.dtype.kind not in "biufc":  # bfloat16, float8, int4 (ml_dtypes): keep the raw bits
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    return arr


def _flatten(state: Any) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]]


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Writes an online rule's state (or any pytree of arrays) to ``path`` as an uncompressed ``.npz``.

    Each leaf is stored under its :func:`jax.tree_util.keystr` path (``.carry[0].v``, ``.key``,
    ``.traces.influence[(0, 0)][0]``, ...), with its exact bits: bfloat16 and other non-numpy dtypes are
    stored as unsigned integers of the same width, typed PRNG keys as their key data. The file is written
    to a temporary name and renamed, so an interrupted save never leaves a truncated checkpoint. The tree
    structure itself is not stored: :func:`load_state` takes a template.

    Args:
      path: the file to write (used as given: no ``.npz`` is appended).
      state: an :class:`~eproptax.OnlineState` from ``rule.init`` / ``rule.step``, or any pytree of arrays.

    Example::

      ep.online.save_state("stream.npz", state)
      ...
      state = ep.online.load_state("stream.npz", like=rule.init(params, batch_size))
    """
    arrays = {_META: np.array(_FORMAT)}
    for key, leaf in _flatten(state):
        arrays[key] = _raw(leaf)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_state(path: str | os.PathLike, *, like: Any) -> Any:
    """Reads a state written by :func:`save_state` into the structure of ``like``, bit for bit.

    ``like`` is a template with the same tree, shapes and dtypes, typically ``rule.init(params,
    batch_size)`` for the same rule, model and batch size (only its structure is used; ``jax.eval_shape``
    of it works too). Each leaf is placed with the template leaf's sharding when it has one (a sharded
    state restores sharded), else on the default device.

    Args:
      path: a file written by :func:`save_state`.
      like: the template.

    Returns:
      The restored state, with the tree of ``like``.

    Raises:
      ValueError: if the file was not written by :func:`save_state` (format version 1 or 2), or a leaf is
        missing, has another shape or another dtype than in ``like`` (the message names the leaf). A state
        saved without a key (every version-1 file) loads into a ``like`` without one.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        if _META not in data.files or str(data[_META]) not in _READS:
            raise ValueError(
                f"load_state: {os.fspath(path)!r} was not written by ep.online.save_state "
                f"(no {_META!r} entry with one of the formats {_READS})."
            )
        flat = _flatten(like)
        expected = {key for key, _ in flat}
        extra = sorted(set(data.files) - expected - {_META})
        if extra:
            raise ValueError(
                f"load_state: the file has leaves that `like` does not: {extra[:5]}; build `like` "
                "with the same rule, model and batch size as the saved state."
            )
        leaves = []
        for key, ref in flat:
            if key not in data.files:
                raise ValueError(
                    f"load_state: leaf {key} of `like` is missing from the file; build `like` with "
                    "the same rule, model and batch size as the saved state."
                )
            raw = data[key]
            ref_data = jax.eval_shape(jax.random.key_data, ref) if _is_key(ref) else ref
            want, ref_shape, shape = np.dtype(ref_data.dtype), tuple(ref_data.shape), tuple(raw.shape)
            if shape != ref_shape:
                raise ValueError(
                    f"load_state: leaf {key} has shape {shape} in the file, expected {ref_shape} as in `like`."
                )
            if raw.dtype != want:
                if raw.dtype.kind != "u" or raw.dtype.itemsize != want.itemsize or want.kind in "biufc":
                    raise ValueError(
                        f"load_state: leaf {key} has dtype {raw.dtype} in the file, expected {want} as in `like`."
                    )
                raw = raw.view(want)
            value = jax.random.wrap_key_data(raw, impl=jax.random.key_impl(ref)) if _is_key(ref) else raw
            sharding = getattr(ref, "sharding", None)
            leaves.append(
                jax.device_put(value, sharding) if isinstance(sharding, jax.sharding.Sharding) else jnp.asarray(value)
            )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
