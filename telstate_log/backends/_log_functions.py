"""The Redis Functions library through which shared-log writers write.

Theory of operation
-------------------
Every write of a :class:`~telstate_log.backends.RedisLogBackend` is one
``FCALL`` into the library ``telstatelog``, run atomically by the server:

1. check the shared log belongs to this database (its ``S:meta`` hash in the
   *log db* names the telstate db it was started from; another db's call is
   refused before anything changes);
2. apply the write to the telstate db exactly as katsdptelstate's scripts do
   (``SETNX`` / ``ZADD`` / ``HSETNX`` / ``UNLINK`` / ``FLUSHDB``; a key of the
   wrong type fails here with ``WRONGTYPE``, before anything changed);
3. only if that changed something: select the log db, take the next
   position from ``S:meta``, read the server's clock (clamped so recorded
   times never decrease), ``XADD`` the stream record with ID
   ``<position>-0``, select the telstate db again and publish katsdptelstate's
   ``update/<key>`` message.

Redis does not roll a function back, so every step that can fail comes
before the first change.  A function reply is ``{old value or false,
position or 0}`` (``add_many``: ``{false, first position or 0, count}``).
``tslog_observe`` records a write that already happened (a katsdptelstate
client's, seen by a recorder): the event only.
The record layout is :mod:`telstate_log.core._stream_format`'s; the head is
packed with its :data:`~telstate_log.core._stream_format.HEAD_FORMAT`.
The library is loaded (``FUNCTION LOAD REPLACE``) when the server does not
have this :data:`VERSION`, so mixed versions of writers reload it rather
than run an old one by accident; bump :data:`VERSION` with any change.
"""

from __future__ import annotations

from ..core._events import ADD, ADD_BATCH, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION
from ..core._stream_format import HEAD_FORMAT

__all__ = ["LIBRARY", "LIBRARY_NAME", "VERSION", "log_db_for"]

LIBRARY_NAME = "telstatelog"
VERSION = "5"

#: Every function takes ARGV[1..4] = log db, stream name, telstate db, session id.
_COMMON = 4


def log_db_for(db: int) -> int:
    """The database holding the shared log of telstate database `db`."""
    return 14 if db == 15 else 15


_TEMPLATE = r"""#!lua name=@NAME@
local VERSION = '@VERSION@'

-- Select the log db, read the last position and recorded time, and refuse a
-- stream that belongs to another telstate db -- all before anything changes.
-- Returns last position, last recorded time, error reply (or nil).
local function enter(a)
    redis.call('SELECT', a[1])
    local m = redis.call('HMGET', a[2] .. ':meta', 'pos', 'rec', 'db')
    redis.call('SELECT', a[3])
    if m[3] and m[3] ~= a[3] then
        return 0, 0, redis.error_reply('TSLOG the shared log ' .. a[2] ..
            ' belongs to database ' .. m[3] .. ', not ' .. a[3])
    end
    return tonumber(m[1] or '0'), m[2] and struct.unpack('<d', m[2]) or 0, nil
end

-- The server's clock, clamped so that recorded times never decrease.
local function now(last)
    local t = redis.call('TIME')
    local rec = tonumber(t[1]) + tonumber(t[2]) / 1000000
    if rec < last then rec = last end
    return rec
end

-- Record one event (or `count` samples) of `kind` after position `last`;
-- returns its first position.
local function record(a, last, lastrec, kind, key, tail, count)
    redis.call('SELECT', a[1])
    local pos = last + 1
    local rec = now(lastrec)
    redis.call('HSET', a[2] .. ':meta', 'pos', pos + count - 1, 'rec', struct.pack('<d', rec))
    redis.call('XADD', a[2], string.format('%d-0', pos), 'e',
               struct.pack('@HEAD@', kind, rec, tonumber(a[4]), #key) .. key .. tail)
    redis.call('SELECT', a[3])
    return pos
end

local function publish(key, message)
    redis.call('PUBLISH', 'update/' .. key, message)
end

redis.register_function{function_name='tslog_version', flags={'no-writes'},
    callback=function(keys, a) return VERSION end}

redis.register_function('tslog_session', function(keys, a)
    local pos, lastrec, err = enter(a)
    if err then return err end
    redis.call('SELECT', a[1])
    local meta = a[2] .. ':meta'
    local session = redis.call('HINCRBY', meta, 'session', 1)
    local rec = now(lastrec)
    redis.call('HSET', meta, 'rec', struct.pack('<d', rec), 'db', a[3],
               'version', VERSION)
    -- after event <pos>: ID <pos>-<n>, n >= 1, past any session record already there
    -- (the stream's last entry may also be a batch that began before <pos>)
    local seq = 1
    local last = redis.call('XREVRANGE', a[2], '+', '-', 'COUNT', 1)[1]
    if last then
        local ms, n = string.match(last[1], '^(%d+)-(%d+)$')
        if tonumber(ms) == pos then seq = tonumber(n) + 1 end
    end
    redis.call('XADD', a[2], string.format('%d-%d', pos, seq), 'e',
               struct.pack('@HEAD@', @SESSION@, rec, session, 0) .. a[5])
    redis.call('SELECT', a[3])
    return session
end)

redis.register_function('tslog_set', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    if redis.call('SETNX', keys[1], a[5]) == 0 then
        return {redis.call('GET', keys[1]), 0}
    end
    local pos = record(a, last, lastrec, @IMMUTABLE@, keys[1], a[5], 1)
    publish(keys[1], a[5])
    return {false, pos}
end)

redis.register_function('tslog_add', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    if redis.call('ZADD', keys[1], 0, a[5]) == 0 then
        return {false, 0}
    end
    local pos = record(a, last, lastrec, @ADD@, keys[1], string.reverse(string.sub(a[5], 1, 8)) ..
                       string.sub(a[5], 9), 1)
    publish(keys[1], a[5])
    return {false, pos}
end)

redis.register_function('tslog_add_many', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    local stamps, lengths, values, members = {}, {}, {}, {}
    for i = 5, #a do
        local member = a[i]
        if redis.call('ZADD', keys[1], 0, member) == 1 then
            local value = string.sub(member, 9)
            stamps[#stamps + 1] = string.reverse(string.sub(member, 1, 8))
            lengths[#lengths + 1] = struct.pack('<I4', #value)
            values[#values + 1] = value
            members[#members + 1] = member
        end
    end
    local count = #members
    if count == 0 then
        return {false, 0, 0}
    end
    local tail = struct.pack('<I4I4', count, 0) .. table.concat(stamps) ..
                 table.concat(lengths) .. table.concat(values)
    local pos = record(a, last, lastrec, @ADD_BATCH@, keys[1], tail, count)
    for i = 1, count do
        publish(keys[1], members[i])
    end
    return {false, pos, count}
end)

redis.register_function('tslog_set_indexed', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    if redis.call('HSETNX', keys[1], a[5], a[6]) == 0 then
        return {redis.call('HGET', keys[1], a[5]), 0}
    end
    local pos = record(a, last, lastrec, @INDEXED@, keys[1],
                       struct.pack('<I4', #a[5]) .. a[5] .. a[6], 1)
    publish(keys[1], '\3' .. tostring(#a[5]) .. '\n' .. a[5] .. a[6])
    return {false, pos}
end)

redis.register_function('tslog_delete', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    if redis.call('UNLINK', keys[1]) == 0 then
        return {false, 0}
    end
    return {false, record(a, last, lastrec, @DELETE@, keys[1], '', 1)}
end)

-- Record a write that already happened in the telstate db (made by a client
-- that bypassed the library, seen by a recorder): the event only, no change
-- and no message.  ARGV[5] = kind, ARGV[6] = tail.
redis.register_function('tslog_observe', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    local kind = tonumber(a[5])
    if kind ~= @IMMUTABLE@ and kind ~= @ADD@ and kind ~= @INDEXED@ and kind ~= @DELETE@
            and kind ~= @CLEAR@ then
        return redis.error_reply('TSLOG cannot observe an event of kind ' .. a[5])
    end
    return {false, record(a, last, lastrec, kind, keys[1], a[6], 1)}
end)

redis.register_function('tslog_clear', function(keys, a)
    local last, lastrec, err = enter(a)
    if err then return err end
    if redis.call('DBSIZE') == 0 then
        return {false, 0}
    end
    redis.call('FLUSHDB')
    return {false, record(a, last, lastrec, @CLEAR@, '', '', 1)}
end)
"""


def _library() -> bytes:
    text = _TEMPLATE
    for name, value in (("NAME", LIBRARY_NAME), ("VERSION", VERSION), ("HEAD", HEAD_FORMAT),
                        ("SESSION", SESSION), ("IMMUTABLE", IMMUTABLE), ("ADD_BATCH", ADD_BATCH),
                        ("ADD", ADD), ("INDEXED", INDEXED), ("DELETE", DELETE),
                        ("CLEAR", CLEAR)):
        text = text.replace(f"@{name}@", str(value))
    return text.encode()


#: The library's source, as loaded with ``FUNCTION LOAD REPLACE``.
LIBRARY = _library()
