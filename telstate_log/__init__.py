"""telstate-log: telescope state as an event-sourced, append-only log.

Speaks katsdptelstate's API (so code can switch imports) and adds what a log
makes possible: durable history, crash recovery, replay, time travel, audit.
The synchronous API is here; the asynchronous one is :mod:`telstate_log.aio`;
backends are in :mod:`telstate_log.backends`.
"""

from ._asof import Changes
from ._encoding import (
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
from ._errors import (
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
    TelstateError,
    TimeoutError,
)
from ._frontend import HistoryEvent
from ._repair import RepairReport, VerifyReport, repair_log, verify_log
from ._telescope_state import TelescopeState
from ._types import KeyType
from ._version import __version__

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
    "RdbAofPreambleError",
    "RdbParseError",
    "RdbUnsupportedTypeError",
    "ReadOnlyError",
    "RepairReport",
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
