"""The package's layers, read from its imports.

Every module of ``telstate_log`` belongs to a layer by its folder; a module
may import only from its own layer or the layers below it (imports for type
annotations too), and no group of modules may import each other in a circle
(counting imports inside functions: a lazy import hides a cycle, it does not
remove it; an import under ``TYPE_CHECKING`` runs only in the type checker and
does not count).  The order, lowest first::

    core      pure: events, record format, value encoding, state, key rules
    storage   the segment log (files, recovery, checkpoints, seals, history)
    rdb       the RDB / DUMP codec (beside storage: neither imports the other)
    backends  memory, log and Redis backends, sync and async
    frontend  TelescopeState (sync and aio) and the package's public names
    replay    projector, recorder, paced replay, RDB export and import
    cli       the command line
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "telstate_log"

RANKS = {"core": 0, "storage": 1, "rdb": 1, "backends": 2, "frontend": 3, "replay": 4,
         "cli": 5}
#: Layers of the same rank that must not import each other.
APART = {frozenset({"storage", "rdb"})}
#: Top-level modules: the public facade sits with the front ends.
TOP = {"__init__": "frontend", "aio": "frontend", "_version": "core", "__main__": "cli"}
#: Imports allowed against the order, each with its reason.
EXEMPT: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return TOP["__init__"]
    if parts[1] in RANKS:
        return parts[1]
    return TOP[parts[1]]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def imports(name: str, path: Path, known: dict[str, Path], *,
            typing_only: bool = True) -> Iterator[str]:
    """Every module of the package that `name` imports, anywhere in the file
    (without those under ``TYPE_CHECKING`` unless `typing_only`)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if typing_only else _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "telstate_log":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "telstate_log":
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target


def graph(*, typing_only: bool = True) -> dict[str, set[str]]:
    known = modules()
    return {name: {t for t in imports(name, path, known, typing_only=typing_only)
                   if t in known and t != name}
            for name, path in known.items()}


def test_the_layers_are_folders() -> None:
    for name in modules():
        assert layer(name) in RANKS, name


def test_no_import_runs_against_the_layer_order() -> None:
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            a, b = layer(name), layer(target)
            if (name, target) in EXEMPT:
                continue
            if RANKS[b] > RANKS[a] or frozenset({a, b}) in APART:
                wrong.append(f"{name} ({a}) imports {target} ({b})")
    assert not wrong, "\n".join(sorted(wrong))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    # A package's __init__ re-exports its modules; a module importing a name
    # from its own package's __init__ would close a circle, and is counted.
    assert cycles(graph(typing_only=False)) == []


def test_the_checker_sees_cycles_and_wrong_imports() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert layer("telstate_log.core._state") == "core"
    assert layer("telstate_log.cli._main") == "cli"
    assert layer("telstate_log") == "frontend"
    edges = graph()
    assert "telstate_log.core._state" in edges["telstate_log.backends._memory"]


def test_lower_layers_import_nothing_from_the_cli() -> None:
    for name, targets in graph().items():
        if layer(name) != "cli":
            assert not [t for t in targets if layer(t) == "cli"], name


def test_the_cli_uses_only_public_names_of_the_layers_below() -> None:
    """A command module imports a lower layer's package (``..storage``,
    ``telstate_log``), never one of its private modules (``..storage._seal``)."""
    wrong = []
    for name, targets in graph().items():
        if layer(name) == "cli":
            wrong += [f"{name} imports {t}" for t in targets if layer(t) != "cli"
                      and any(part.startswith("_") for part in t.split(".")[1:])]
    assert not wrong, "\n".join(sorted(wrong))


def test_importing_the_package_loads_no_redis_and_no_storage_engine() -> None:
    """redis-py and the segment log load only when a Redis or log backend is used."""
    import subprocess
    import sys

    code = ("import sys, telstate_log, telstate_log.aio, telstate_log.backends\n"
            "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')"
            " or m.startswith('telstate_log.storage')))\n"
            "telstate_log.backends.LogBackend, telstate_log.aio.RedisBackend\n"
            "print('redis' in sys.modules, 'telstate_log.storage._log' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "True True"]


def private_reads(path: Path) -> Iterator[tuple[ast.Attribute, str]]:
    """Every ``x._y`` in the module at `path` (dunders aside), with ``x`` as written."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            yield node, ast.unparse(node.value)


def test_no_module_outside_storage_reads_a_private_field_of_a_log() -> None:
    """A Log is used through its interface: ``log._anything`` appears only in storage/."""
    wrong = []
    for name, path in modules().items():
        if layer(name) == "storage":
            continue
        for node, base in private_reads(path):
            if base.rpartition(".")[2] in ("log", "_log", "event_log", "_event_log"):
                wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


def test_backends_read_no_private_attribute_of_another_object() -> None:
    """In backends/, ``x._y`` is only ``self._y``, ``cls._y`` or ``super()._y``: a driver
    is given what it needs (a StateBackend's ``writer()``, a monitor's pub/sub
    factory).  ``_replace`` is a named tuple's public method."""
    wrong = []
    for name, path in modules().items():
        if layer(name) == "backends":
            wrong += [f"{name}:{node.lineno}: {ast.unparse(node)}"
                      for node, base in private_reads(path)
                      if base not in ("self", "cls", "super()") and node.attr != "_replace"]
    assert not wrong, "\n".join(wrong)


def test_command_modules_do_not_import_the_entry_point() -> None:
    """cli/_main.py loads the command modules by name (an edge the import graph
    cannot see), so a command module importing it would close a circle."""
    edges = graph(typing_only=False)
    for name, targets in edges.items():
        if name.startswith("telstate_log.cli.") and name != "telstate_log.cli._main":
            assert "telstate_log.cli._main" not in targets, name
