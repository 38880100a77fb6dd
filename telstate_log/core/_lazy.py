"""Names a package exports but imports only when first used.

Theory of operation
-------------------
``import telstate_log`` must stay fast (every command-line run pays for it),
so the packages that export heavy pieces -- the storage engine, redis,
the replay tools -- name them in their ``__all__`` but import them on first
use.  :func:`lazy_names` makes the package's module ``__getattr__``
(PEP 562): asked for a name it does not hold yet, the package imports the
module that defines it (named relative to the package), keeps the value in
its namespace (so the next lookup never gets here) and returns it.  Each
package also imports those names under ``TYPE_CHECKING``, so type checkers
see the real definitions.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of `package`: `homes` maps each lazily exported
    name to the module defining it, relative to `package` (``"._log"``,
    ``"..backends.aio._log"``)."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
