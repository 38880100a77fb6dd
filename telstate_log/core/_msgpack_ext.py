"""The msgpack extension types of the value encoding, packed and unpacked.

Theory of operation: :mod:`telstate_log.core._encoding` documents the format and
owns the entry points (:func:`~telstate_log.core._encoding.encode_value`,
:func:`~telstate_log.core._encoding.decode_value`, the pickle policy).  This module
holds what msgpack calls back into: the ``default`` hook that packs tuples,
complex numbers, numpy arrays and numpy scalars as extension types, and the
``ext_hook`` that unpacks them from untrusted bytes.

Both hooks exist once per nesting depth (a tuple in a tuple, the descriptor of
a structured numpy scalar), so that nesting is bounded by :data:`MAX_NESTING`
without any shared mutable counter; the first levels are decoded by
``msgpack.unpackb`` and deeper ones by a heap-allocated ``Unpacker`` so that
hostile nesting cannot overflow the C stack.  Every failure is a
:exc:`~telstate_log.DecodeError` or :exc:`~telstate_log.EncodeError`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import math
import re
import struct
from collections.abc import Callable
from typing import Any, Final, Literal

import msgpack
import numpy as np
import numpy.lib.format as npy_format

from ._errors import DecodeError, EncodeError

__all__ = ["CHECK_FOR_TIMESTAMPS", "EXT_HOOK", "MAX_NESTING", "check_timestamps", "packb",
           "short_repr"]

_EXT_TUPLE: Final = 1
_EXT_COMPLEX128: Final = 2
_EXT_NDARRAY: Final = 3
_EXT_NUMPY_SCALAR: Final = 4

#: Deepest nesting of extension types (tuples in tuples, numpy scalars with
#: structured dtypes) that is encoded or decoded.
MAX_NESTING: Final = 32
#: Nesting levels decoded with msgpack.unpackb, which uses ~40 KiB of C stack.
_NESTING_ON_STACK: Final = 2

#: Longest .npy header text accepted (numpy.load's default limit is 10000).
#: Parsing the header costs a few hundred bytes of memory per byte of text.
_NPY_MAX_HEADER_SIZE: Final = 65536


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

_pack_complex = struct.Struct(">dd").pack


def _encode_ndarray(array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype.hasobject:
        raise EncodeError(f"cannot encode an array of dtype {array.dtype}: it contains objects")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _encode_numpy_scalar(scalar: np.generic, depth: int) -> bytes:
    dtype = scalar.dtype
    if dtype.hasobject:
        raise EncodeError(f"cannot encode a numpy scalar of dtype {dtype}: it contains objects")
    return packb(npy_format.dtype_to_descr(dtype), depth + 1) + scalar.tobytes()


def _make_pack_default(depth: int) -> Callable[[Any], msgpack.ExtType]:
    """The msgpack ``default`` hook for objects nested in `depth` extension types."""

    def pack_default(obj: Any) -> msgpack.ExtType:
        # The order of the checks is part of the format.
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, packb(list(obj), depth + 1))
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(_EXT_NDARRAY, _encode_ndarray(obj))
        if isinstance(obj, np.generic):
            return msgpack.ExtType(_EXT_NUMPY_SCALAR, _encode_numpy_scalar(obj, depth))
        if isinstance(obj, complex):
            return msgpack.ExtType(_EXT_COMPLEX128, _pack_complex(obj.real, obj.imag))
        raise EncodeError(f"cannot encode a value of type {type(obj).__module__}."
                          f"{type(obj).__qualname__}")

    return pack_default


_PACK_DEFAULTS: Final = [_make_pack_default(depth) for depth in range(MAX_NESTING + 1)]


def packb(obj: Any, depth: int) -> bytes:
    if depth > MAX_NESTING:
        raise EncodeError(f"value nests tuples or numpy scalars more than {MAX_NESTING} deep")
    packed: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True,
                                  default=_PACK_DEFAULTS[depth])
    return packed


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

_unpack_complex = struct.Struct(">dd").unpack
_unpack_float64_from = struct.Struct(">d").unpack_from
_npy_header_length_v3 = struct.Struct("<I").unpack_from

# numpy < 1.24 has no max_header_size argument (its header readers are uncapped).
_HEADER_READER_KWARGS: Final[dict[str, Any]] = (
    {"max_header_size": _NPY_MAX_HEADER_SIZE}
    if "max_header_size" in inspect.signature(npy_format.read_array_header_1_0).parameters
    else {}
)


def short_repr(obj: Any) -> str:
    """repr of untrusted data, cut short for error messages."""
    text = repr(obj)
    return text if len(text) <= 100 else text[:100] + "..."


def _checked_dtype(descr: Any, what: str) -> np.dtype[Any]:
    """Turn a descriptor from untrusted data into a dtype we are willing to build."""
    try:
        dtype = npy_format.descr_to_dtype(descr)
    except Exception as exc:
        raise DecodeError(f"invalid dtype descriptor {short_repr(descr)} in {what}: {exc}") from exc
    return _safe_dtype(dtype, what)


def _safe_dtype(dtype: np.dtype[Any], what: str) -> np.dtype[Any]:
    """`dtype` if we are willing to build `what` of it: no objects, no sub-arrays."""
    if dtype.hasobject:
        raise DecodeError(f"refusing to decode {what} of dtype {dtype}: it contains objects")
    if dtype.subdtype is not None:
        raise DecodeError(f"invalid sub-array dtype {dtype} in {what}")
    return dtype


def _read_npy_header_v3(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Parse a version 3.0 (UTF-8) .npy header, for which numpy has no public reader."""
    if len(data) < 12:
        raise DecodeError("truncated .npy header")
    (length,) = _npy_header_length_v3(data, 8)
    if length > _NPY_MAX_HEADER_SIZE:
        raise DecodeError(f".npy header of {length} bytes is too long")
    end = 12 + length
    if end > len(data):
        raise DecodeError("truncated .npy header")
    try:
        header = ast.literal_eval(data[12:end].decode("utf-8"))
    except Exception as exc:
        raise DecodeError(f"cannot parse .npy header: {short_repr(str(exc))}") from exc
    if not isinstance(header, dict) or header.keys() != {"descr", "fortran_order", "shape"}:
        raise DecodeError(f"invalid .npy header {short_repr(header)}")
    shape = header["shape"]
    fortran_order = header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(dim, int) for dim in shape):
        raise DecodeError(f"invalid shape {short_repr(shape)} in .npy header")
    if not isinstance(fortran_order, bool):
        raise DecodeError(f"invalid fortran_order {short_repr(fortran_order)} in .npy header")
    return shape, fortran_order, _checked_dtype(header["descr"], "array"), end


def _decode_ndarray(data: bytes) -> np.ndarray[Any, Any]:
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise DecodeError("array is not in .npy format")
    version = (data[6], data[7])
    if version == (3, 0):
        shape, fortran_order, dtype, offset = _read_npy_header_v3(data)
    elif version in {(1, 0), (2, 0)}:
        # Check the length before numpy decodes the header text.
        if version == (1, 0):
            length = int.from_bytes(data[8:10], "little")
        else:
            length = int.from_bytes(data[8:12], "little")
        if length > _NPY_MAX_HEADER_SIZE:
            raise DecodeError(f".npy header of {length} bytes is too long")
        reader = (npy_format.read_array_header_1_0 if version == (1, 0)
                  else npy_format.read_array_header_2_0)
        fp = io.BytesIO(data)
        fp.seek(8)
        try:
            shape, fortran_order, dtype = reader(fp, **_HEADER_READER_KWARGS)
        except Exception as exc:
            raise DecodeError(f"invalid .npy header: {short_repr(str(exc))}") from exc
        _safe_dtype(dtype, "a .npy array")
        offset = fp.tell()
    else:
        raise DecodeError(f"unsupported .npy format version {version[0]}.{version[1]}")

    if any(dim < 0 for dim in shape):
        raise DecodeError(f"invalid shape {short_repr(shape)} in .npy header")
    # Python integers: no overflow however large the claimed shape.
    nbytes: int = math.prod(shape) * dtype.itemsize
    available = len(data) - offset
    if nbytes != available:
        raise DecodeError(f"array of shape {shape} and dtype {dtype} needs {nbytes} bytes "
                          f"of data, but {available} are present")
    order: Literal["C", "F"] = "F" if fortran_order else "C"
    array: np.ndarray[Any, Any]
    try:
        if dtype.itemsize == 0:
            array = np.zeros(shape, dtype, order=order)
        else:
            array = np.ndarray(shape, dtype, buffer=data, offset=offset, order=order)
            array = array.copy(order="K")
    except Exception as exc:
        raise DecodeError(f"cannot build array of shape {shape} and dtype {dtype}: {exc}") from exc
    return array


@functools.lru_cache(maxsize=256)
def _scalar_dtype_from_str(descr: bytes) -> np.dtype[Any]:
    """Cached dtype of a numpy scalar whose descriptor is a short string."""
    return _checked_dtype(descr.decode("utf-8"), "numpy scalar")


def _decode_numpy_scalar(data: bytes, depth: int) -> np.generic:
    dtype: np.dtype[Any]
    head = data[0] if data else 0
    if 0xA0 <= head <= 0xBF:
        # Usual case: descriptor is a msgpack fixstr such as '<f8'.
        end = 1 + (head & 0x1F)
        if end > len(data):
            raise DecodeError("truncated numpy scalar")
        try:
            dtype = _scalar_dtype_from_str(data[1:end])
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid numpy scalar descriptor: {exc}") from exc
    else:
        descr, end = _unpack_prefix(data, depth + 1)
        dtype = _checked_dtype(descr, "numpy scalar")
    raw = data[end:]
    size: int = dtype.itemsize
    kind = dtype.kind
    if kind == "S":
        # Build directly: going through an array would drop trailing NULs.
        if len(raw) == size or (size == 0 and raw == b"\0"):
            result: np.generic = np.bytes_(raw[:size])
            return result
    elif kind == "U":
        if size == 0 and raw in (b"", b"\0\0\0\0"):
            empty: np.generic = np.str_("")
            return empty
        if len(raw) == size:
            try:
                text = str(np.frombuffer(raw, dtype)[0])
            except Exception as exc:
                raise DecodeError(f"invalid numpy string scalar: {exc}") from exc
            # Restore the NULs that numpy strips from the end.
            padded: np.generic = np.str_(text + "\0" * (size // 4 - len(text)))
            return padded
    elif len(raw) == size:
        try:
            if size == 0:
                return np.zeros(1, dtype)[0]  # type: ignore[no-any-return]
            # Void scalars are views: give them a writable buffer of their own.
            buffer = bytearray(raw) if kind == "V" else raw
            return np.frombuffer(buffer, dtype)[0]  # type: ignore[no-any-return]
        except Exception as exc:
            raise DecodeError(f"cannot build numpy scalar of dtype {dtype}: {exc}") from exc
    raise DecodeError(f"numpy scalar of dtype {dtype} needs {size} bytes, got {len(raw)}")


def _unpack_prefix(data: bytes, depth: int) -> tuple[Any, int]:
    """Decode the msgpack object at the start of `data`; return it and its length."""
    if depth > MAX_NESTING:
        raise DecodeError(f"value nests tuples or numpy scalars more than {MAX_NESTING} deep")
    # max_buffer_size also bounds every length inside.
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_EXT_HOOKS[depth],
                                max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise DecodeError("truncated msgpack object") from None
    return obj, int(unpacker.tell())


def _unpack_nested(data: bytes, depth: int) -> Any:
    """Decode the msgpack content of an extension type nested `depth` deep."""
    if depth <= _NESTING_ON_STACK:
        return _unpack(data, depth)
    # unpackb keeps its state on the C stack (tens of KiB): deeper down, use an
    # Unpacker, which keeps it on the heap, so that nesting cannot overflow the stack.
    obj, end = _unpack_prefix(data, depth)
    if end != len(data):
        raise DecodeError("extra data after msgpack object")
    return obj


def _make_ext_hook(depth: int) -> Callable[[int, bytes], Any]:
    """The msgpack ``ext_hook`` for extension types nested `depth` deep."""

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _EXT_TUPLE:
            items = _unpack_nested(data, depth + 1)
            if type(items) is not list:
                raise DecodeError("invalid tuple: content is not a list")
            return tuple(items)
        if code == _EXT_COMPLEX128:
            if len(data) != 16:
                raise DecodeError(f"complex128 needs 16 bytes, got {len(data)}")
            return complex(*_unpack_complex(data))
        if code == _EXT_NDARRAY:
            return _decode_ndarray(data)
        if code == _EXT_NUMPY_SCALAR:
            return _decode_numpy_scalar(data, depth)
        raise DecodeError(f"unknown msgpack extension type {code}")

    return ext_hook


def _unpack(data: bytes | memoryview, depth: int) -> Any:
    if depth > MAX_NESTING:
        raise DecodeError(f"value nests tuples or numpy scalars more than {MAX_NESTING} deep")
    # unpackb limits every length (max_str_len, max_bin_len, max_array_len,
    # max_map_len, max_ext_len) to len(data) by default (msgpack >= 1.0,
    # documented; the tests check it).  Passing them again would cost more
    # than the rest of decoding a small value.
    return _unpackb(data, raw=False, strict_map_key=False, ext_hook=_EXT_HOOKS[depth])


_EXT_HOOKS: Final = [_make_ext_hook(depth) for depth in range(MAX_NESTING + 1)]
EXT_HOOK: Final = _EXT_HOOKS[0]
_unpackb = msgpack.unpackb


# msgpack decodes its timestamp extension (type -1) itself, without calling
# ext_hook.  A timestamp decodes only from fixext 4, fixext 8 or ext 8 with
# 12 bytes, so the input contains D6 FF, D7 FF or C7 0C FF if it holds one.
_TIMESTAMP_REFUSED: Final = "unknown msgpack extension type -1 (timestamp)"
_find_timestamp = re.compile(b"[\xd6\xd7]\xff|\xc7\x0c\xff").search


CHECK_FOR_TIMESTAMPS: Final = frozenset([list, dict, tuple, msgpack.Timestamp])


def check_timestamps(result: Any, value: bytes) -> None:
    """Reject `result` (decoded from `value`) if it contains a msgpack timestamp."""
    if type(result) is msgpack.Timestamp:
        raise DecodeError(_TIMESTAMP_REFUSED)
    if _find_timestamp(value) is not None:
        _reject_timestamps(result)


def _reject_timestamps(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            raise DecodeError(_TIMESTAMP_REFUSED)
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
