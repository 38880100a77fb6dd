"""Helper processes for the shared-log fleet tests, and the state they compare.

Usage::

    python _shared_writer_proc.py write URL WRITER COUNT SEED
    python _shared_writer_proc.py follow URL

``write``: a RedisLogBackend with source label ``writer-WRITER`` prints
``ready``, waits for a line on stdin (so that every writer starts at once),
then makes COUNT mixed writes chosen by SEED: samples to the shared sensor
``shared`` (value ``[writer, i]``) and to its own ``own-WRITER``,
immutables raced by every writer (``race-<n>``: first writer wins) and its
own ``imm-WRITER-<i>``, ``set_indexed`` of its own and raced sub-keys of
``idx``, and deletes of its own keys.  Before each write it prints ``try i``,
and after the call returned (the write is *acknowledged*) a JSON line
``[i, kind, key, sub_key, value, timestamp, changed]`` (bytes as hex;
``changed`` is what the call said: a raced write that found a value changed
nothing), flushed, so a parent can kill it at any moment.  Then ``done``.

``follow``: a StreamFollower of URL prints ``ready``; each line ``dump PATH``
on stdin makes it catch up with the stream (``sync``) and pickle
:func:`state_of` to PATH, then print ``dumped``.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import sys
from typing import Any

from telstate_log import KeyType, encode_value
from telstate_log.backends import RedisBackend, RedisLogBackend, StreamFollower

__all__ = ["redis_state", "state_of", "write_op"]


def state_of(backend: Any) -> dict[bytes, tuple[str, Any]]:
    """Every key of a backend with its type and value (a sensor: all its samples)."""
    out: dict[bytes, tuple[str, Any]] = {}
    for key in sorted(backend.keys(b"*")):
        kind = KeyType.coerce(backend.key_type(key))
        if kind == KeyType.MUTABLE:
            value = backend.get_range(key, 0.0, math.inf, False, True)
        else:
            value = backend.get(key)[0]
        out[key] = (kind.name, value)
    return out


def redis_state(url: str) -> dict[bytes, tuple[str, Any]]:
    """:func:`state_of` the telstate database at `url`, read from Redis."""
    backend = RedisBackend.from_url(url)
    try:
        return state_of(backend)
    finally:
        backend.close()


def write_op(backend: RedisLogBackend, writer: int, i: int, rng: random.Random,
             own: dict[bytes, bool]) -> list[Any]:
    """One random write; returns ``[i, kind, key, sub_key, value, ts, changed]``."""
    r = rng.random()
    sub: bytes | None = None
    ts: float | None = None
    if r < 0.35:
        key, value, ts = b"shared", encode_value([writer, i]), i * 16.0 + writer
        backend.add_mutable(key, value, ts)
        kind, changed = "add", True
    elif r < 0.55:
        key, value, ts = b"own-%d" % writer, encode_value(i), float(i)
        backend.add_mutable(key, value, ts)
        kind, changed = "add", True
        own[key] = True
    elif r < 0.65:
        key, value = b"race-%d" % rng.randrange(50), encode_value([writer, i])
        kind, changed = "set", backend.set_immutable(key, value) is None
    elif r < 0.72:
        key, value = b"imm-%d-%d" % (writer, i), encode_value(i)
        kind, changed = "set", backend.set_immutable(key, value) is None
        own[key] = True
    elif r < 0.82:
        key, sub, value = b"idx", encode_value(f"{writer}-{i}"), encode_value(i)
        kind, changed = "set_indexed", backend.set_indexed(key, sub, value) is None
    elif r < 0.92:
        key, sub = b"idx", encode_value(f"r{rng.randrange(30)}")
        value = encode_value([writer, i])
        kind, changed = "set_indexed", backend.set_indexed(key, sub, value) is None
    else:
        existing = [k for k, there in own.items() if there]
        key = rng.choice(existing) if existing else b"own-%d" % writer
        value = b""
        backend.delete(key)
        kind, changed = "delete", own.get(key, False)
        own[key] = False
    return [i, kind, key.hex(), None if sub is None else sub.hex(), value.hex() or None, ts,
            changed]


def write(url: str, writer: int, count: int, seed: int) -> None:
    backend = RedisLogBackend.from_url(url, source=f"writer-{writer}")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    sys.stdin.readline()
    rng = random.Random(seed)
    own: dict[bytes, bool] = {}
    for i in range(count):
        out.write(f"try {i}\n")
        out.flush()
        out.write(json.dumps(write_op(backend, writer, i, rng, own)) + "\n")
        out.flush()
    out.write("done\n")
    out.flush()
    backend.close()


def follow(url: str) -> None:
    follower = StreamFollower.from_url(url)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        command, _, path = line.strip().partition(" ")
        if command == "dump":
            follower.sync()
            with open(path, "wb") as f:
                pickle.dump((follower.position, state_of(follower)), f)
            sys.stdout.write("dumped\n")
            sys.stdout.flush()
    follower.close()


def main() -> None:
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        follow(sys.argv[2])


if __name__ == "__main__":
    main()
