"""JSON that scripts can trust: every value has one JSON form, and it can be undone.

:func:`decode` below is an independent reader of the scheme the README
documents (tagged objects with a ``"$type"`` member).  Hostile values -- NaN
next to the string ``"nan"``, bytes next to a dict ``{"hex": ...}``, dicts
that use the tag key themselves, tuples next to lists, numpy arrays and
scalars of many dtypes, complex numbers -- must come back exactly, with
their types, both through :func:`to_json` and through the commands.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib.format import descr_to_dtype
from test_cli import cli

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.cli._output import to_json

TAG = "$type"


# ------------------------------------------------------ a reader of the scheme
def _tuples(descr: Any) -> Any:
    return tuple(_tuples(x) for x in descr) if isinstance(descr, list) else descr


def _dtype(descr: Any) -> np.dtype[Any]:
    if isinstance(descr, list):  # structured: [[name, type(, shape)], ...]
        return descr_to_dtype([_tuples(field) for field in descr])
    return descr_to_dtype(descr)


def _elements(data: Any, depth: int) -> Any:
    return decode(data) if depth == 0 else [_elements(x, depth - 1) for x in data]


def _array(dtype: np.dtype[Any], shape: list[int], data: Any) -> np.ndarray:
    if dtype.kind == "m":  # integer counts of the unit
        counts = np.array(data, dtype=np.int64).reshape(shape)
        return counts.view(dtype.newbyteorder("=")).astype(dtype)
    if dtype.kind == "M":  # ISO strings
        return np.array(data, dtype=dtype).reshape(shape)
    return np.array(_elements(data, len(shape)), dtype=dtype).reshape(shape)


def decode(doc: Any) -> Any:
    """The value a JSON document written by ``to_json`` stands for."""
    if isinstance(doc, list):
        return [decode(x) for x in doc]
    if not isinstance(doc, dict):
        return doc
    if TAG not in doc:
        return {k: decode(v) for k, v in doc.items()}
    kind = doc[TAG]
    if kind == "float":
        return float(doc["value"])
    if kind == "bytes":
        return bytes.fromhex(doc["hex"])
    if kind == "tuple":
        return tuple(decode(x) for x in doc["items"])
    if kind == "complex":
        return complex(decode(doc["real"]), decode(doc["imag"]))
    if kind == "dict":
        return {decode(k): decode(v) for k, v in doc["items"]}
    if kind == "ndarray":
        return _array(_dtype(doc["dtype"]), doc["shape"], doc["data"])
    if kind == "numpy":
        return _array(_dtype(doc["dtype"]), [], doc["value"])[()]
    raise ValueError(f"{kind!r} cannot be decoded")


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and same(a.tolist(), b.tolist())
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and same(np.asarray(a).tolist(), np.asarray(b).tolist())
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or \
            (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return same(list(a.items()), list(b.items()))
    return bool(a == b)


def strict_loads(text: str) -> Any:
    """json.loads refusing Python's NaN/Infinity extensions (not JSON)."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


STRUCT = np.dtype([("a", "<i4"), ("b", "S3"), ("c", "<f8", (2,))])
HOSTILE: dict[str, Any] = {
    "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "neg_zero": -0.0, "one_float": 1.0,
    "one": 1, "true": True, "none": None, "big": 2**64 - 1, "neg_big": -(2**63),
    "str_nan": "nan", "str_inf": "-inf", "str_tag": "$type", "empty": "",
    "bytes": b"\x00\xff", "no_bytes": b"",
    "hex_dict": {"hex": "00ff"}, "float_dict": {"value": "nan"},
    "fake_tag": {TAG: "float", "value": "nan"}, "fake_bytes": {TAG: "bytes", "hex": "00"},
    "tag_only": {TAG: 1}, "nested_tag": {"a": {TAG: {TAG: "tuple", "items": []}}},
    "int_keys": {1: "a", (1, "x"): b"x"}, "empty_dict": {},
    "tuple": (1, 2), "list": [1, 2], "empty_tuple": (), "empty_list": [],
    "one_tuple": ((),), "mixed": [(1,), [2], {"t": (3, [4])}],
    "complex": complex(1, -2), "complex_nan": complex(math.nan, math.inf),
    "floats": np.array([1.5, math.nan, -math.inf, -0.0]),
    "ints16": np.array([[1, 2], [3, 4]], np.int16), "big_endian": np.arange(3, dtype=">u4"),
    "complex64": np.array([1 + 2j, math.nan], np.complex64),
    "strings": np.array(["a", "nan", ""]), "byte_strings": np.array([b"x", b""]),
    "bools": np.array([True, False]), "empty_2d": np.zeros((2, 0)), "empty_0": np.zeros((0, 3)),
    "zero_d": np.array(5.0), "f16": np.arange(3, dtype=np.float16),
    "records": np.array([(1, b"ab", (0.5, math.nan)), (-2, b"", (1e300, -0.0))], STRUCT),
    "dates": np.array(["2024-05-01T12:00:00.000000001", "NaT"], "M8[ns]"),
    "durations": np.array([5, -3, "NaT"], "m8[s]").astype("m8[s]"),
    "f32": np.float32(0.5), "f64_nan": np.float64(math.nan), "i64": np.int64(3),
    "u8": np.uint8(255), "np_bool": np.bool_(True), "np_str": np.str_("s"),
    "np_bytes": np.bytes_(b"b"), "c64": np.complex64(1 - 1j),
    "record": np.array([(7, b"z", (1.0, 2.0))], STRUCT)[0],
    "date": np.datetime64("2024-01-01"), "nat": np.timedelta64("NaT", "ms"),
}


# ---------------------------------------------------------------- to_json
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_to_json_round_trips(name: str) -> None:
    value = HOSTILE[name]
    text = json.dumps(to_json(value), allow_nan=False)
    assert same(decode(strict_loads(text)), value), text


def test_look_alikes_differ() -> None:
    """The ambiguities of the old scheme: each pair prints differently now."""
    pairs = [("nan", "str_nan"), ("-inf", "str_inf"), ("bytes", "hex_dict"),
             ("nan", "fake_tag"), ("bytes", "fake_bytes"), ("tuple", "list"),
             ("f32", "one_float"), ("i64", "one"), ("np_str", "empty")]
    for a, b in pairs:
        assert to_json(HOSTILE[a]) != to_json(HOSTILE[b]), (a, b)
    assert to_json(1.0) == 1.0 and json.dumps(to_json(1.0)) == "1.0"
    assert to_json({"a": [1, "x", None]}) == {"a": [1, "x", None]}  # JSON stays plain


def test_unknown_objects_are_tagged_one_way() -> None:
    doc = to_json({1, 2})
    assert doc == {TAG: "object", "class": "builtins.set", "repr": "{1, 2}"}
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode(doc)


# ------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("json") / "log"
    with LogBackend(path) as backend:
        ts = TelescopeState(backend)
        for name, value in HOSTILE.items():
            ts[f"attr_{name}"] = value
        ts.add("sensor", math.nan, ts=1.0)
        ts.add("sensor", "nan", ts=2.0)
        ts.add("sensor", b"\x00", ts=3.0)
        ts.add("sensor", {"hex": "00"}, ts=4.0)
        ts.set_indexed("gains", ("m000", "h"), np.array([1 + 1j], np.complex64))
        ts.set_indexed("gains", ("m000", "v"), {TAG: "bytes"})
    return path


def test_get_json_round_trips_hostile_values(log: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with LogBackend(log, readonly=True, follow=False) as backend:
        stored = {name: TelescopeState(backend).get(f"attr_{name}") for name in HOSTILE}
    for name in HOSTILE:
        rc, out, err = cli(capsys, "get", str(log), f"attr_{name}", "--json")
        assert rc == 0, err
        assert same(decode(strict_loads(out)["value"]), stored[name]), (name, out)


def test_range_history_and_audit_json(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = [math.nan, "nan", b"\x00", {"hex": "00"}]
    rc, out, _ = cli(capsys, "range", str(log), "sensor", "--json", "--st", "1.5")
    doc = strict_loads(out)
    assert (doc["st"], doc["st_utc"], doc["et"], doc["et_utc"]) == \
        (1.5, "1970-01-01T00:00:01.500000Z", None, None)
    assert same([decode(s["value"]) for s in doc["samples"]], ["nan", b"\x00", {"hex": "00"}])
    rc, out, _ = cli(capsys, "range", str(log), "sensor", "--json")
    samples = strict_loads(out)["samples"]
    assert same([decode(s["value"]) for s in samples], expected)
    rc, out, _ = cli(capsys, "history", str(log), "sensor", "--json")
    assert same([decode(e["value"]) for e in strict_loads(out)["events"]], expected)
    rc, out, _ = cli(capsys, "get", str(log), "gains", "--json")
    table = {decode(item["sub_key"]): decode(item["value"])
             for item in strict_loads(out)["value"]}
    assert list(table) == [("m000", "h"), ("m000", "v")]
    assert same(table[("m000", "h")], np.array([1 + 1j], np.complex64))
    assert same(table[("m000", "v")], {TAG: "bytes"})
    rc, out, _ = cli(capsys, "audit", str(log), "--json")
    assert rc == 0
    written = {e["key"]: decode(e["value"]) for e in strict_loads(out)["events"]
               if e["key"].startswith("attr_")}
    with LogBackend(log, readonly=True, follow=False) as backend:
        ts = TelescopeState(backend)
        assert all(same(written[key], ts.get(key)) for key in ts.keys("attr_*"))
    assert len(written) == len(HOSTILE)
    _, out, _ = cli(capsys, "tail", str(log), "gains", "--json")
    assert [decode(json.loads(line)["sub_key"]) for line in out.splitlines()] == \
        [("m000", "h"), ("m000", "v")]
