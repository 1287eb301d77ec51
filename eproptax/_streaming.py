"""Saving and restoring an online rule's state as a plain ``.npz``, bit for bit."""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The format's version. 2: an OnlineState may hold a random key (``.key``, stored as its key data); a state
# without one has the leaves of version 1, so files of either version load.
_FORMAT = "eproptax.online_state/2"
_READS = ("eproptax.online_state/1", _FORMAT)
_META = "__eproptax__"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # the signatures an .npz (a zip archive) starts with


def _is_key(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _raw(key: str, leaf) -> np.ndarray:
    """The leaf's bits as a numpy array of a dtype that ``np.save`` stores natively."""
    arr = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    if arr.dtype.kind not in "biufcV":  # objects, strings, dates: nothing an online rule holds
        raise ValueError(f"save_state: leaf {key} is not an array of numbers (dtype {arr.dtype}); it cannot be saved.")
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

    Raises:
      FileNotFoundError: if the folder of ``path`` does not exist (the message names it; it is not created).
      ValueError: if a leaf is not an array of numbers (the message names the leaf).

    Example::

      ep.online.save_state("stream.npz", state)
      ...
      state = ep.online.load_state("stream.npz", like=rule.init(params, batch_size))
    """
    path = os.fspath(path)
    _check_target(path)
    arrays = {_META: np.array(_FORMAT)}
    for key, leaf in _flatten(state):
        arrays[key] = _raw(key, leaf)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _check_target(path: str) -> None:
    """The folder of ``path`` exists and ``path`` is not a folder (else an error that names them)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(f"save_state: cannot write {path!r}: {folder!r} is not a folder.")
        raise FileNotFoundError(
            f"save_state: cannot write {path!r}: the folder {folder!r} does not exist (create it first, "
            "e.g. with os.makedirs(folder, exist_ok=True))."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"save_state: cannot write {path!r}: it is a folder; give a file name.")


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
      FileNotFoundError: if there is no file at ``path`` (the message names it).
      ValueError: if the file is not an ``.npz`` archive (a text file, random bytes), is truncated or corrupt,
        was not written by :func:`save_state` (format version 1 or 2), or a leaf is missing, has another shape
        or another dtype than in ``like`` (each message names the file and, where one is at fault, the leaf).
        A state saved without a key (every version-1 file) loads into a ``like`` without one.
    """
    path = os.fspath(path)
    data = _read_npz(path)
    if _META not in data or str(data[_META]) not in _READS:
        raise ValueError(
            f"load_state: {path!r} was not written by ep.online.save_state "
            f"(no {_META!r} entry with one of the formats {_READS})."
        )
    flat = _flatten(like)
    expected = {key for key, _ in flat}
    extra = sorted(set(data) - expected - {_META})
    if extra:
        raise ValueError(
            f"load_state: {path!r} has leaves that `like` does not: {extra[:5]}; build `like` "
            "with the same rule, model and batch size as the saved state."
        )
    leaves = []
    for key, ref in flat:
        if key not in data:
            raise ValueError(
                f"load_state: leaf {key} of `like` is missing from {path!r}; build `like` with "
                "the same rule, model and batch size as the saved state."
            )
        leaves.append(_restore(path, key, data[key], ref))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive at ``path``; an error that names the file for anything else."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_state: there is no file {path!r}.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"load_state: {path!r} is a folder, not a file written by ep.online.save_state.")
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in _ZIP:
        what = (
            "is empty"
            if not head
            else f"starts with {head!r}, not with an .npz archive's signature (another kind of file, or truncated)"
        )
        raise ValueError(f"load_state: {path!r} was not written by ep.online.save_state: the file {what}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"load_state: {path!r} is truncated or corrupt: it is not a readable .npz archive "
            f"({type(error).__name__}). Save the state again."
        ) from None
    data = {}
    with archive:
        for key in archive.files:
            try:
                data[key] = archive[key]
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as error:
                raise ValueError(
                    f"load_state: entry {key!r} of {path!r} cannot be read ({type(error).__name__}): the file is "
                    "truncated or corrupt, or holds something save_state never writes (an object array)."
                ) from None
    return data


def _restore(path: str, key: str, raw: np.ndarray, ref: Any) -> jax.Array:
    """The leaf ``key`` read from the file, checked against ``like``'s leaf ``ref`` and placed as it is."""
    ref = ref if hasattr(ref, "dtype") and hasattr(ref, "shape") else np.asarray(ref)
    ref_data = jax.eval_shape(jax.random.key_data, ref) if _is_key(ref) else ref
    want, ref_shape, shape = np.dtype(ref_data.dtype), tuple(ref_data.shape), tuple(raw.shape)
    if shape != ref_shape:
        raise ValueError(f"load_state: leaf {key} has shape {shape} in {path!r}, expected {ref_shape} as in `like`.")
    if raw.dtype != want:
        if raw.dtype.kind != "u" or raw.dtype.itemsize != want.itemsize or want.kind in "biufc":
            raise ValueError(f"load_state: leaf {key} has dtype {raw.dtype} in {path!r}, expected {want} as in `like`.")
        raw = raw.view(want)
    value = jax.random.wrap_key_data(raw, impl=jax.random.key_impl(ref)) if _is_key(ref) else raw
    sharding = getattr(ref, "sharding", None)
    return jax.device_put(value, sharding) if isinstance(sharding, jax.sharding.Sharding) else jnp.asarray(value)
