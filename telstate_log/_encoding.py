"""Encoding of values stored in the telescope state.

Theory of operation
-------------------
This module is the definition of the value format.  Every stored value is a
byte string whose first byte says how the rest is encoded:

``0xFF`` (:data:`ENCODING_MSGPACK`, the default)
    The rest is one msgpack object, packed with ``use_bin_type=True`` (so
    ``str`` and ``bytes`` stay distinct) and ``strict_types=True`` (so
    subclasses of built-in types are not silently flattened).  Plain msgpack
    covers ``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``float`` (always
    as a float64, ``0xCB``), ``str``, ``bytes`` (also ``bytearray`` and
    ``memoryview``, which decode as ``bytes``), ``list`` and ``dict``.
    Everything else uses msgpack extension types:

    ===  =================  ==================================================
    1    ``tuple``          msgpack of the tuple as a list
    2    ``complex``        16 bytes: real and imaginary part, ``'>dd'``
    3    ``numpy.ndarray``  the array in ``.npy`` format (``numpy.save`` with
                            ``allow_pickle=False``)
    4    numpy scalar       msgpack of ``numpy.lib.format.dtype_to_descr`` of
                            the dtype, immediately followed by the raw bytes
                            of the value (``value.tobytes()``)
    ===  =================  ==================================================

    When an object fits several rows the first wins, in the order tuple,
    ndarray, numpy scalar, complex: so ``numpy.complex128(1j)`` is a numpy
    scalar (type 4) although it is also a ``complex``.  Objects of other types
    (including object dtypes) cannot be encoded: :exc:`EncodeError`.

``0x00`` to ``0x80`` (:data:`ENCODING_PICKLE`)
    A Python pickle (written with protocol :data:`PICKLE_PROTOCOL`, whose
    first byte is 0x80; older protocols start with an ASCII opcode).  Pickles
    can run arbitrary code, so decoding them is refused unless the caller
    allows it: ``allow_pickle=True``, :func:`set_allow_pickle` or the
    environment variable ``KATSDPTELSTATE_ALLOW_PICKLE=1``.

``0x81`` to ``0xFE``
    Reserved; decoding fails with :exc:`DecodeError`.

Encoding is byte-for-byte identical to katsdptelstate 1.0's
``encode_value``, which matters because stored values are compared as bytes
(immutable keys, sample ordering).

Speed
-----
Decoding is on the path of every read.  A msgpack float64 (``FF CB`` and 8
bytes, the usual sensor value) is decoded without msgpack, and
:func:`decode_values` decodes a run of them with one numpy call.  Other
values go straight to ``msgpack.unpackb``; numpy scalar dtypes are cached.

Safety rules for decoding
-------------------------
Stored bytes may be damaged or hostile.  Decoding either returns a value or
raises :exc:`DecodeError`; it never raises anything else, and it never
allocates much more memory than the size of its input:

* every msgpack length (str, bin, array, map, ext) is limited by the size of
  the input, so a header claiming 4 GiB fails before anything is allocated;
* ``.npy`` data is not handed to ``numpy.load`` (which allocates the whole
  array described by the header before noticing that the data is short).
  The header is parsed on its own (at most 64 KiB of header text), object
  dtypes and sub-array dtypes are refused, the data must hold exactly
  ``prod(shape) * itemsize`` bytes, and only then is the array built (and
  copied, so that it is writable like ``numpy.load``'s);
* a numpy scalar must carry exactly ``dtype.itemsize`` raw bytes and must not
  contain objects;
* unknown extension types, including msgpack's own timestamp type (-1),
  are refused;
* extension types nest at most 32 deep (a tuple in a tuple, the descriptor
  of a structured numpy scalar), and :func:`encode_value` refuses to nest
  deeper, so that whatever it encodes decodes.  ``msgpack.unpackb`` keeps
  about 40 KiB of state on the C stack, so decoding nested tuples with it
  crashes the interpreter after ~200 levels (8 MiB stack; ~20 with 1 MiB,
  as in some threads): only the first two nested levels use it, deeper ones
  use ``msgpack.Unpacker``, whose state is on the heap.

Differences from katsdptelstate
-------------------------------
Everything katsdptelstate 1.0 can decode decodes here to an equal value,
except input it accepted only by being lax (trailing bytes after a numpy
scalar, msgpack timestamps, sub-array dtypes) and values nesting extension
types more than 32 deep.  katsdptelstate crashes with a segmentation fault
on nesting a little deeper than ~200 (see above), here it is a
:exc:`DecodeError`.  These values are encoded by katsdptelstate but cannot
be decoded back by it; they round-trip here:

* dicts whose keys are not ``str`` or ``bytes`` (``int``, ``float``,
  ``bool``, ``None``, ``tuple``, ``complex``, numpy scalars): katsdptelstate
  unpacks with msgpack's default ``strict_map_key=True``;
* numpy scalars of zero size: ``numpy.str_('')``, ``numpy.bytes_(b'')``,
  ``numpy.void(b'')`` (numpy cannot build them from a buffer, and the first
  two are written with 4 and 1 NUL bytes although their itemsize is 0);
* ``numpy.str_`` and ``numpy.bytes_`` scalars ending in NUL characters,
  e.g. ``numpy.bytes_(b'a\\0')``: reading them through an array drops the
  NULs, giving an unequal value of another dtype;
* numpy structured scalars with padding (e.g. aligned structs): their
  descriptor names the padding ``''``, which ``numpy.dtype`` turns into an
  extra field ``f<n>``, so the decoded scalar cannot even be compared with
  the original, or decoding fails if a real field has that name (the
  descriptor is now read with ``descr_to_dtype``, as for arrays);
* arrays whose ``.npy`` header is longer than 10000 bytes (structured
  dtypes with hundreds of fields), which ``numpy.load`` refuses by default.

katsdptelstate also raises ``OverflowError``, ``UnicodeEncodeError`` and
others from ``encode_value`` for some unencodable values; here every such
failure is an :exc:`EncodeError`.  The only values katsdptelstate encodes
and this module refuses are those nesting more than 32 deep.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import math
import os
import pickle
import re
import struct
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import msgpack
import numpy as np
import numpy.lib.format as npy_format

from ._errors import DecodeError, EncodeError

__all__ = [
    "ALLOWED_ENCODINGS",
    "ENCODING_DEFAULT",
    "ENCODING_MSGPACK",
    "ENCODING_PICKLE",
    "PICKLE_PROTOCOL",
    "decode_value",
    "decode_values",
    "encode_value",
    "equal_encoded_values",
    "set_allow_pickle",
]

#: Pickle protocol used when encoding with :data:`ENCODING_PICKLE`
PICKLE_PROTOCOL: Final = 2
#: Header byte of pickled values (the PROTO opcode of protocol 2 and later)
ENCODING_PICKLE: Final = b"\x80"
#: Header byte of msgpack-encoded values
ENCODING_MSGPACK: Final = b"\xff"
#: Encoding used by :func:`encode_value` when none is given
ENCODING_DEFAULT: Final = ENCODING_MSGPACK
#: The encodings accepted by :func:`encode_value`
ALLOWED_ENCODINGS: Final = frozenset([ENCODING_PICKLE, ENCODING_MSGPACK])

_EXT_TUPLE: Final = 1
_EXT_COMPLEX128: Final = 2
_EXT_NDARRAY: Final = 3
_EXT_NUMPY_SCALAR: Final = 4

_ENV_ALLOW_PICKLE: Final = "KATSDPTELSTATE_ALLOW_PICKLE"

#: Deepest nesting of extension types (tuples in tuples, numpy scalars with
#: structured dtypes) that is encoded or decoded.
_MAX_NESTING: Final = 32
#: Nesting levels decoded with msgpack.unpackb, which uses ~40 KiB of C stack.
_NESTING_ON_STACK: Final = 2

#: Longest .npy header text accepted (numpy.load's default limit is 10000).
#: Parsing the header costs a few hundred bytes of memory per byte of text.
_NPY_MAX_HEADER_SIZE: Final = 65536

_PICKLE_REFUSED: Final = (
    "the value is a pickle, which could run arbitrary code when decoded, so "
    "pickles are refused by default (MeerKAT data from before March 2019 "
    "contains them).  If you trust the source of the data, allow them with "
    f"{_ENV_ALLOW_PICKLE}=1 in the environment, set_allow_pickle(True), or "
    "allow_pickle=True"
)
_PICKLE_WARNING: Final = (
    "The telescope state contains pickled values.  Decoding them is a security "
    "risk, which you have accepted with set_allow_pickle."
)


def _allow_pickle_from_env() -> bool:
    setting = os.environ.get(_ENV_ALLOW_PICKLE)
    if setting is None or setting == "0":
        return False
    if setting == "1":
        return True
    warnings.warn(f"Ignoring unknown value {setting!r} of {_ENV_ALLOW_PICKLE} "
                  "(expected '0' or '1'); pickles are refused", stacklevel=2)
    return False


# Pickle policy.  Other modules' tests patch these two names directly.
_allow_pickle = _allow_pickle_from_env()
_warn_on_pickle = False
_pickle_lock = threading.Lock()


def set_allow_pickle(allow: bool, warn: bool = False) -> None:
    """Choose whether :func:`decode_value` decodes pickles by default.

    This overrides the setting taken from the environment variable
    ``KATSDPTELSTATE_ALLOW_PICKLE`` at import time.

    Parameters
    ----------
    allow
        Decode pickles when the caller does not say otherwise.
    warn
        Issue a :exc:`FutureWarning` the next time a pickle is decoded under
        this setting (once only).  Has no effect if `allow` is false.
    """
    global _allow_pickle, _warn_on_pickle
    with _pickle_lock:
        _allow_pickle = bool(allow)
        _warn_on_pickle = bool(warn)



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
    return _packb(npy_format.dtype_to_descr(dtype), depth + 1) + scalar.tobytes()


def _make_pack_default(depth: int) -> Callable[[Any], msgpack.ExtType]:
    """The msgpack ``default`` hook for objects nested in `depth` extension types."""

    def pack_default(obj: Any) -> msgpack.ExtType:
        # The order of the checks is part of the format.
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj), depth + 1))
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(_EXT_NDARRAY, _encode_ndarray(obj))
        if isinstance(obj, np.generic):
            return msgpack.ExtType(_EXT_NUMPY_SCALAR, _encode_numpy_scalar(obj, depth))
        if isinstance(obj, complex):
            return msgpack.ExtType(_EXT_COMPLEX128, _pack_complex(obj.real, obj.imag))
        raise EncodeError(f"cannot encode a value of type {type(obj).__module__}."
                          f"{type(obj).__qualname__}")

    return pack_default


_PACK_DEFAULTS: Final = [_make_pack_default(depth) for depth in range(_MAX_NESTING + 1)]


def _packb(obj: Any, depth: int) -> bytes:
    if depth > _MAX_NESTING:
        raise EncodeError(f"value nests tuples or numpy scalars more than {_MAX_NESTING} deep")
    packed: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True,
                                  default=_PACK_DEFAULTS[depth])
    return packed


_FLOAT_HEADER: Final = b"\xff\xcb"
_pack_float64 = struct.Struct(">d").pack
# msgpack positive fixint (0..127) and negative fixint (-32..-1), with our header
_SMALL_INTS: Final[list[bytes]] = [b"\xff" + struct.pack("b", i) if i < 0 else b"\xff" + bytes((i,))
                      for i in range(-32, 128)]


def encode_value(value: Any, encoding: bytes = ENCODING_DEFAULT) -> bytes:
    """Encode `value` for storage (see the module documentation for the format).

    Parameters
    ----------
    value
        The value to encode.
    encoding
        One of :data:`ALLOWED_ENCODINGS`.

    Raises
    ------
    ValueError
        If `encoding` is not one of :data:`ALLOWED_ENCODINGS`.
    EncodeError
        If `value` cannot be encoded (a :exc:`ValueError` too).
    """
    if encoding == ENCODING_MSGPACK:
        # Fast paths for the commonest sensor values; the bytes are exactly
        # what msgpack produces (a Python float is always packed as float64).
        t = type(value)
        if t is float:
            packed: bytes = _pack_float64(value)
            return _FLOAT_HEADER + packed
        if t is int and -32 <= value < 128:
            small: bytes = _SMALL_INTS[value + 32]
            return small
        try:
            return ENCODING_MSGPACK + _packb(value, 0)
        except EncodeError:
            raise
        except Exception as exc:
            raise EncodeError(f"cannot encode value with msgpack: {exc}") from exc
    if encoding == ENCODING_PICKLE:
        try:
            return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as exc:
            raise EncodeError(f"cannot pickle value: {exc}") from exc
    raise ValueError(f"unknown encoding {encoding!r} (expected one of "
                     f"{sorted(ALLOWED_ENCODINGS)})")


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


def _short(obj: Any) -> str:
    """repr of untrusted data, cut short for error messages."""
    text = repr(obj)
    return text if len(text) <= 100 else text[:100] + "..."


def _checked_dtype(descr: Any, what: str) -> np.dtype[Any]:
    """Turn a descriptor from untrusted data into a dtype we are willing to build."""
    try:
        dtype = npy_format.descr_to_dtype(descr)
    except Exception as exc:
        raise DecodeError(f"invalid dtype descriptor {_short(descr)} in {what}: {exc}") from exc
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
        raise DecodeError(f"cannot parse .npy header: {_short(str(exc))}") from exc
    if not isinstance(header, dict) or header.keys() != {"descr", "fortran_order", "shape"}:
        raise DecodeError(f"invalid .npy header {_short(header)}")
    shape = header["shape"]
    fortran_order = header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(dim, int) for dim in shape):
        raise DecodeError(f"invalid shape {_short(shape)} in .npy header")
    if not isinstance(fortran_order, bool):
        raise DecodeError(f"invalid fortran_order {_short(fortran_order)} in .npy header")
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
            raise DecodeError(f"invalid .npy header: {_short(str(exc))}") from exc
        if dtype.hasobject:
            raise DecodeError(f"refusing to decode an array of dtype {dtype}: it contains objects")
        if dtype.subdtype is not None:
            raise DecodeError(f"invalid sub-array dtype {dtype} in .npy header")
        offset = fp.tell()
    else:
        raise DecodeError(f"unsupported .npy format version {version[0]}.{version[1]}")

    if any(dim < 0 for dim in shape):
        raise DecodeError(f"invalid shape {_short(shape)} in .npy header")
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
    if depth > _MAX_NESTING:
        raise DecodeError(f"value nests tuples or numpy scalars more than {_MAX_NESTING} deep")
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
    if depth > _MAX_NESTING:
        raise DecodeError(f"value nests tuples or numpy scalars more than {_MAX_NESTING} deep")
    # unpackb limits every length (max_str_len, max_bin_len, max_array_len,
    # max_map_len, max_ext_len) to len(data) by default (msgpack >= 1.0,
    # documented; the tests check it).  Passing them again would cost more
    # than the rest of decoding a small value.
    return _unpackb(data, raw=False, strict_map_key=False, ext_hook=_EXT_HOOKS[depth])


_EXT_HOOKS: Final = [_make_ext_hook(depth) for depth in range(_MAX_NESTING + 1)]
_EXT_HOOK: Final = _EXT_HOOKS[0]
_unpackb = msgpack.unpackb


# msgpack decodes its timestamp extension (type -1) itself, without calling
# ext_hook.  A timestamp decodes only from fixext 4, fixext 8 or ext 8 with
# 12 bytes, so the input contains D6 FF, D7 FF or C7 0C FF if it holds one.
_TIMESTAMP_REFUSED: Final = "unknown msgpack extension type -1 (timestamp)"
_find_timestamp = re.compile(b"[\xd6\xd7]\xff|\xc7\x0c\xff").search


_CHECK_FOR_TIMESTAMPS: Final = frozenset([list, dict, tuple, msgpack.Timestamp])


def _check_timestamps(result: Any, value: bytes) -> None:
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


def _decode_pickle(value: bytes, allow_pickle: bool | None) -> Any:
    global _warn_on_pickle
    if allow_pickle is None:
        with _pickle_lock:
            allow_pickle = _allow_pickle
            warn = allow_pickle and _warn_on_pickle
            if warn:
                _warn_on_pickle = False
        if warn:
            warnings.warn(_PICKLE_WARNING, FutureWarning, stacklevel=3)
    if not allow_pickle:
        raise DecodeError(_PICKLE_REFUSED)
    try:
        # latin1 lets Python 2 pickles of numpy arrays load.
        return pickle.loads(value, encoding="latin1")
    except Exception as exc:
        raise DecodeError(f"invalid pickle: {_short(str(exc))}") from exc


def decode_value(value: bytes, allow_pickle: bool | None = None) -> Any:
    """Decode a value produced by :func:`encode_value`.

    The encoding is recognised from the first byte.

    Parameters
    ----------
    value
        The encoded value.
    allow_pickle
        Whether to decode pickles.  ``None`` (the default) follows
        :func:`set_allow_pickle`, or failing that the environment variable
        ``KATSDPTELSTATE_ALLOW_PICKLE``; pickles are refused if neither says
        otherwise.

    Raises
    ------
    DecodeError
        If `value` is empty, malformed, uses an unknown encoding, or is a
        pickle that is not allowed.  No other exception escapes.
    """
    try:
        head = value[0]
    except IndexError:
        raise DecodeError("cannot decode an empty value") from None
    if head == 0xFF:
        size = len(value)
        if size == 10 and value[1] == 0xCB:
            # Fast path for the most common value: a msgpack float64.
            return _unpack_float64_from(value, 2)[0]
        # Avoid copying large values; slicing is cheaper for small ones.
        data = value[1:] if size <= 4096 else memoryview(value)[1:]
        try:
            result = _unpackb(data, raw=False, strict_map_key=False, ext_hook=_EXT_HOOK)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"invalid msgpack value: {_short(str(exc))}") from exc
        # A timestamp contains 0xFF: test that cheaply (memchr) first.
        if type(result) in _CHECK_FOR_TIMESTAMPS and (size > 4096 or 0xFF in data):
            _check_timestamps(result, value)
        return result
    if head <= 0x80:
        return _decode_pickle(value, allow_pickle)
    raise DecodeError(f"value starts with unknown encoding byte {head:#04x} "
                      "(written by a newer version?)")


# A run of msgpack-encoded float64 values, as (header, value) records.
_FLOAT64_RECORD: Final = np.dtype([("header", ">u2"), ("value", ">f8")])
_FLOAT64_HEADER: Final = 0xFFCB
# Below this many values the per-value loop beats numpy's fixed overhead.
_BATCH_MIN: Final = 32


def decode_values(values: Sequence[bytes], allow_pickle: bool | None = None) -> list[Any]:
    """Decode many values; equivalent to ``[decode_value(v) for v in values]``.

    When every value is a msgpack float64 (10 bytes, the usual case for sensor
    samples) they are decoded together by numpy: the values are joined and
    read as an array of (2-byte header, big-endian float64) records.
    Otherwise each value is decoded by :func:`decode_value`.

    Raises
    ------
    DecodeError
        If any value cannot be decoded.
    """
    if len(values) >= _BATCH_MIN and set(map(len, values)) == {10}:
        records = np.frombuffer(b"".join(values), dtype=_FLOAT64_RECORD)
        if bool((records["header"] == _FLOAT64_HEADER).all()):
            return records["value"].tolist()  # type: ignore[no-any-return]
    return [decode_value(value, allow_pickle) for value in values]


def _as_utf8(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def equal_encoded_values(a: bytes, b: bytes) -> bool:
    """Whether two encoded values represent the same value.

    True if the encodings are identical, or if both decode to ``str`` or
    ``bytes`` and are equal after encoding strings as UTF-8 (undecodable
    bytes carried as surrogate escapes), so ``'abc'`` equals ``b'abc'``.
    Structured values are not compared recursively.  A string holding
    surrogates that cannot be encoded is compared as a string.

    Raises
    ------
    DecodeError
        If either value cannot be decoded.
    """
    if a == b:
        return True
    value_a = decode_value(a)
    value_b = decode_value(b)
    try:
        bytes_a = _as_utf8(value_a)
        bytes_b = _as_utf8(value_b)
    except UnicodeEncodeError:
        return isinstance(value_a, str) and isinstance(value_b, str) and value_a == value_b
    return bytes_a is not None and bytes_a == bytes_b
