"""Read flax's msgpack parameter files with NumPy and ``msgpack`` only: no JAX, no Flax.

The served model (:mod:`ppo.tracking.model`) reads its ``params.msgpack`` with :func:`msgpack_restore`,
so loading and using it imports neither. The format is ``flax.serialization.msgpack_serialize``'s:

- the tree is a msgpack map (string keys) of maps, lists and scalars;
- an ndarray is ext type 1 holding a nested msgpack ``(shape, dtype name, C-order bytes)``;
- a native complex is ext type 2 holding a nested msgpack ``(real, imag)``;
- a NumPy scalar is ext type 3, encoded as a 0-d ndarray;
- an array over 2**30 bytes is a map ``{"__msgpack_chunked_array__": True, "shape": {"0": ..},
  "chunks": {"0": flat array, ..}}``.

Any other ext type is returned as :class:`msgpack.ExtType`, as flax does. Arrays are read-only views of
the file's bytes, as flax's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np

_NDARRAY, _NATIVE_COMPLEX, _NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


def _dtype(name: bytes) -> np.dtype:
    if name == b"bfloat16":  # flax takes it from jax.numpy; the same type lives in ml_dtypes (no JAX)
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name.decode())


def _ndarray(data: bytes) -> np.ndarray:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=_dtype(dtype_name), count=-1, offset=0).reshape(shape, order="C")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _NDARRAY:
        return _ndarray(data)
    if code == _NATIVE_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    if code == _NPSCALAR:
        return _ndarray(data)[()]
    return msgpack.ExtType(code, data)


def _unchunk(data: dict[str, Any]) -> np.ndarray:
    def as_tuple(d: dict[str, Any]) -> tuple:
        return tuple(d[str(i)] for i in range(len(d)))

    return np.concatenate(as_tuple(data["chunks"])).reshape(as_tuple(data["shape"]))


def _unchunk_in_place(tree: Any) -> Any:
    # as flax does: chunked arrays are found through maps only (not lists)
    if isinstance(tree, dict):
        if _CHUNKED in tree:
            return _unchunk(tree)
        for key, value in tree.items():
            if isinstance(value, dict):
                tree[key] = _unchunk(value) if _CHUNKED in value else _unchunk_in_place(value)
    return tree


def msgpack_restore(encoded: bytes) -> Any:
    """The tree that ``flax.serialization.msgpack_restore(encoded)`` returns, without JAX or Flax."""
    tree = msgpack.unpackb(encoded, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    return _unchunk_in_place(tree)


def read_params(path: str | Path) -> Any:
    """The parameter tree in the flax msgpack file at ``path``."""
    return msgpack_restore(Path(path).read_bytes())
