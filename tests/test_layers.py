"""The package's layers point one way: no import cycle between its packages, and the training engine
imports no stage. Read from the source with `ast` (every import, lazy ones inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import spinegrade

SRC = Path(spinegrade.__file__).parent
# what the engine (train/) may not import: the stages and what sits above them
ABOVE_ENGINE = {"localize", "grade", "evaluate", "predict", "pipeline", "report", "serve", "cli", "demo"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    p = SRC.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every spinegrade module that `path` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "spinegrade"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "spinegrade":
                continue
            for a in node.names:  # `from . import vocab` imports the module spinegrade.vocab
                out.add(f"{mod}.{a.name}" if _is_module(f"{mod}.{a.name}") else mod)
    return out


def _unit(module: str) -> str | None:
    """The layer a module belongs to: its top-level package or module (None for the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        src = _unit(_module_name(path))
        if src is None:
            continue
        deps = {_unit(m) for m in _imports(path)} - {None, src}
        graph.setdefault(src, set()).update(deps)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_and_relative_imports():
    g = package_graph()
    assert "grade" in g["predict"] and "localize" in g["predict"]  # imported inside a method
    assert "models" in g["train"]  # checkpoint.load_model imports models lazily
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_packages():
    assert _cycles(package_graph()) == []


def test_the_engine_imports_no_stage():
    bad = package_graph()["train"] & ABOVE_ENGINE
    assert not bad, f"train/ imports {sorted(bad)}"


def test_stage_one_does_not_import_stage_two():
    assert "grade" not in package_graph()["localize"]
