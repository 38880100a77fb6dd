"""telstate-log: telescope state as an event-sourced, append-only log.

Speaks katsdptelstate's API (so code can switch imports) and adds what a log
makes possible: durable history, crash recovery, replay, time travel, audit.
The synchronous API is here; the asynchronous one is :mod:`telstate_log.aio`;
backends are in :mod:`telstate_log.backends`.
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .core._asof import Changes
from .core._encoding import (
    ALLOWED_ENCODINGS,
    ENCODING_DEFAULT,
    ENCODING_MSGPACK,
    ENCODING_PICKLE,
    PICKLE_PROTOCOL,
    decode_value,
    encode_value,
    equal_encoded_values,
    set_allow_pickle,
)
from .core._errors import (
    CancelledError,
    ConnectionError,
    DecodeError,
    EncodeError,
    HistoryUnavailableError,
    ImmutableKeyError,
    InvalidKeyError,
    InvalidTimestampError,
    LogCorruptError,
    LogError,
    LogFailedError,
    LogLockedError,
    LogWriteError,
    RdbAofPreambleError,
    RdbParseError,
    RdbUnsupportedTypeError,
    ReadOnlyError,
    ReplicationError,
    SharedLogError,
    StreamCorruptError,
    StreamDivergedError,
    TelstateError,
    TimeoutError,
)
from .core._events import Event
from .core._lazy import lazy_names
from .core._types import KeyType
from .frontend._frontend import HistoryEvent
from .frontend._telescope_state import TelescopeState

if TYPE_CHECKING:
    from .storage._repair import RepairReport, VerifyReport, repair_log, verify_log
    from .storage._retention import PruneReport

__all__ = [
    "ALLOWED_ENCODINGS",
    "ENCODING_DEFAULT",
    "ENCODING_MSGPACK",
    "ENCODING_PICKLE",
    "PICKLE_PROTOCOL",
    "CancelledError",
    "Changes",
    "ConnectionError",
    "DecodeError",
    "EncodeError",
    "Event",
    "HistoryEvent",
    "HistoryUnavailableError",
    "ImmutableKeyError",
    "InvalidKeyError",
    "InvalidTimestampError",
    "KeyType",
    "LogCorruptError",
    "LogError",
    "LogFailedError",
    "LogLockedError",
    "LogWriteError",
    "PruneReport",
    "RdbAofPreambleError",
    "RdbParseError",
    "RdbUnsupportedTypeError",
    "ReadOnlyError",
    "RepairReport",
    "ReplicationError",
    "SharedLogError",
    "StreamCorruptError",
    "StreamDivergedError",
    "TelescopeState",
    "TelstateError",
    "TimeoutError",
    "VerifyReport",
    "__version__",
    "decode_value",
    "encode_value",
    "equal_encoded_values",
    "repair_log",
    "set_allow_pickle",
    "verify_log",
]

#: Names imported on first use (the storage engine loads only for them).
_LAZY = {"RepairReport": "_repair", "VerifyReport": "_repair", "repair_log": "_repair",
         "verify_log": "_repair", "PruneReport": "_retention"}


__getattr__ = lazy_names(__name__, {name: f".storage.{home}" for name, home in _LAZY.items()})
