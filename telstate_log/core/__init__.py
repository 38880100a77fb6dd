"""Pure core: events and their kinds, the record format, value encoding, the
materialised state, key rules and patterns (no files, clocks, locks or sockets).

The package's public names (the event and key types, errors, value encoding)
are re-exported by :mod:`telstate_log`; the names here are those the layers
above use that the package does not publish.
"""

from ._pattern import compile_pattern

__all__ = ["compile_pattern"]
