"""The allowed import directions between packages (docs/ARCHITECTURE.md, "Package map and allowed
imports"), and no import cycles among modules.

Every module of the packages is parsed with `ast`; every import counts, including those inside
functions and under TYPE_CHECKING (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trackpipe", "destinations", "ingest", "workers", "console", "tooling", "commands")

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every name an import statement anywhere in the tree may refer to: `import a.b` names `a.b`,
    `from a import b` names `a.b` (a module, or else a name defined in `a`); see build_graph."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    """module -> the project modules it imports (packages' own modules only)."""
    files = {module_name(p, root): p for pkg in packages if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")}
    graph: Graph = {}
    for module, path in files.items():
        names = imported_names(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
        deps = set()
        for name in names:
            # `import a.b.c` also runs a and a.b: the closest module of the project is what counts.
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                deps.add(name)
        graph[module] = deps
    return graph


def package_of(module: str) -> str:
    return module.split(".")[0]


def is_core(module: str) -> bool:
    return package_of(module) == "trackpipe"


def allowed(source: str, target: str) -> bool:
    """The table of docs/ARCHITECTURE.md as a predicate: may module `source` import `target`?"""
    src, dst = package_of(source), package_of(target)
    if src == dst:
        return True
    if src == "commands":  # the command line wires everything together
        return True
    if src == "tooling":  # benchmarks and soak run every stage, but no command
        return dst != "commands"
    if is_core(source) or src in ("destinations", "ingest", "console"):
        return is_core(target)
    if src == "workers":
        return is_core(target) or dst == "destinations"
    return False


def violations(graph: Graph) -> list[str]:
    return sorted(
        f"{source} imports {target}" for source, deps in graph.items() for target in deps if not allowed(source, target)
    )


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle per back edge found by a depth-first search (empty when the graph is acyclic)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_every_package_is_parsed() -> None:
    graph = build_graph()
    for module in ("trackpipe.config", "destinations.base", "ingest.commit", "workers.ingest"):
        assert module in graph
    # Imports inside functions count: the serving commands import the edge only when they run one.
    assert "ingest.app" in graph["commands.edge"]
    assert "trackpipe.keys" in graph["workers.deadletter"]  # under TYPE_CHECKING


def test_commands_and_tooling_stay_out_of_the_core() -> None:
    graph = build_graph()
    assert "commands.main" in graph and "tooling.soak" in graph
    assert not [m for m in graph if is_core(m) and m.split(".")[-1] in ("cli", "serve", "dev", "bench", "soak")]


def test_import_directions() -> None:
    assert violations(build_graph()) == []


def test_no_import_cycles() -> None:
    assert find_cycles(build_graph()) == []


def test_job_functions_stored_in_redis_still_resolve() -> None:
    """Jobs already queued name these paths: moving them would strand those jobs."""
    import importlib

    from trackpipe.jobs import DELIVER_FUNCTION, INGEST_FUNCTION

    assert (INGEST_FUNCTION, DELIVER_FUNCTION) == ("workers.ingest.run_ingest_job", "workers.deliver.run_delivery_job")
    for name in (INGEST_FUNCTION, DELIVER_FUNCTION):
        module, _, function = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function))


def test_checker_catches_planted_violations() -> None:
    graph: Graph = {
        "trackpipe.keys": set(),
        "trackpipe.config": {"trackpipe.keys", "destinations"},  # core -> plug-in
        "trackpipe.jobs": {"workers.dedup"},  # core -> workers
        "destinations": {"destinations.base", "trackpipe.config"},
        "destinations.base": {"ingest.app"},  # plug-in -> edge
        "ingest.app": {"workers.ingest", "console.app", "trackpipe.keys"},  # edge -> workers, console
        "workers.ingest": {"commands.main"},  # workers -> command line
        "workers.context": {"destinations", "trackpipe.config"},
        "console.app": {"trackpipe.dlq"},
        "commands.main": {"ingest.app", "workers.ingest"},
    }
    assert violations(graph) == [
        "destinations.base imports ingest.app",
        "ingest.app imports console.app",
        "ingest.app imports workers.ingest",
        "trackpipe.config imports destinations",
        "trackpipe.jobs imports workers.dedup",
        "workers.ingest imports commands.main",
    ]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_checker_reads_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "trackpipe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers import b\n"
        "def f():\n    import ingest.c\n"
    )
    for name in ("workers", "ingest"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "workers" / "b.py").write_text("from trackpipe import a\n")
    (tmp_path / "ingest" / "c.py").write_text("from . import d\n")
    (tmp_path / "ingest" / "d.py").write_text("")

    graph = build_graph(tmp_path, ("trackpipe", "workers", "ingest"))
    assert graph["trackpipe.a"] == {"workers.b", "ingest.c"}
    assert graph["ingest.c"] == {"ingest.d"}
    assert violations(graph) == ["trackpipe.a imports ingest.c", "trackpipe.a imports workers.b"]
    assert find_cycles(graph) == [["trackpipe.a", "workers.b", "trackpipe.a"]]


def test_every_destination_type_has_settings_and_a_sender():
    """The config knows a type by its settings (core); the worker sends through its module."""
    from destinations import TYPES
    from trackpipe.destination_settings import DESTINATION_SETTINGS

    assert set(TYPES) == set(DESTINATION_SETTINGS)
    for name, module in TYPES.items():
        assert module.Settings is DESTINATION_SETTINGS[name]
        assert callable(module.open_sender)
