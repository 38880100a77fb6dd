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

import os
import pickle
import struct
import threading
import warnings
from collections.abc import Sequence
from typing import Any, Final

import msgpack
import numpy as np

from ._errors import DecodeError, EncodeError
from ._msgpack_ext import (
    CHECK_FOR_TIMESTAMPS,
    EXT_HOOK,
    check_timestamps,
    packb,
    short_repr,
)

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
    "same_immutable_value",
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

_ENV_ALLOW_PICKLE: Final = "KATSDPTELSTATE_ALLOW_PICKLE"

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


_unpack_float64_from = struct.Struct(">d").unpack_from
_unpackb = msgpack.unpackb

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


#: our header byte and msgpack's float64 marker, then the big-endian double, in one
#: pack call (b"\xff\xcb" + struct.pack(">d", value))
_pack_float_value = struct.Struct(">Hd").pack
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
            packed: bytes = _pack_float_value(0xFFCB, value)
            return packed
        if t is int and -32 <= value < 128:
            small: bytes = _SMALL_INTS[value + 32]
            return small
        try:
            return ENCODING_MSGPACK + packb(value, 0)
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
        raise DecodeError(f"invalid pickle: {short_repr(str(exc))}") from exc


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
            result = _unpackb(data, raw=False, strict_map_key=False, ext_hook=EXT_HOOK)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"invalid msgpack value: {short_repr(str(exc))}") from exc
        # A timestamp contains 0xFF: test that cheaply (memchr) first.
        if type(result) in CHECK_FOR_TIMESTAMPS and (size > 4096 or 0xFF in data):
            check_timestamps(result, value)
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


def same_immutable_value(old: bytes, new: bytes) -> bool:
    """Whether writing immutable `new` over `old` changes nothing (katsdptelstate's rule).

    Like :func:`equal_encoded_values`, but a value that cannot be decoded is
    the same only as identical bytes (instead of raising).
    """
    if old == new:
        return True
    try:
        return equal_encoded_values(old, new)
    except DecodeError:
        return False
