"""The package's import graph follows the written layer order (docs/engine.md): no cycle, no upward import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "quantcli"

# Lowest first. A module may import modules of its own layer's package or of a lower layer, never a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("quantcli", "quantcli.errors", "quantcli.console", "quantcli.atomic", "quantcli.jobstate", "quantcli.native",
     "quantcli.gguf_constants"),
    ("quantcli.quants", "quantcli.arch", "quantcli.vocab", "quantcli.loaders", "quantcli.imatrix_file",
     "quantcli.hub"),
    ("quantcli.writers",),
    ("quantcli.plan",),
    ("quantcli.sources",),
    ("quantcli.runtime",),
    ("quantcli.engine",),
    ("quantcli.batch",),
    ("quantcli.commands", "quantcli.cli", "quantcli.__main__"),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every quantcli module a file imports, at any depth of the file (lazy imports inside functions count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "quantcli")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quantcli":
            # `from pkg import x` imports pkg itself (its __init__ runs and x is looked up on it), and
            # pkg.x when x is a module: both are edges. resolve() walks `pkg.x` back to pkg when x is a name.
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def known_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_every_module_has_a_layer() -> None:
    assert [m for m in known_modules() if layer_of(m) < 0] == []


def test_no_module_imports_a_higher_layer() -> None:
    modules = known_modules()
    violations = []
    for name, path in sorted(modules.items()):
        for imported in sorted(imports_of(path)):
            target = resolve(imported, modules)
            if target is None or target == "quantcli":
                continue
            if layer_of(target) > layer_of(name):
                violations.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert violations == []


def test_no_import_cycle() -> None:
    modules = known_modules()
    graph = {name: {t for i in imports_of(path) if (t := resolve(i, modules)) and t != name and t != "quantcli"}
             for name, path in modules.items()}  # fmt: skip
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk finds imports inside functions (lazy imports are the usual way to hide an upward arrow)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from quantcli.engine.job import run\n    import quantcli.cli\n")
    assert imports_of(source) == {"quantcli.engine.job", "quantcli.engine.job.run", "quantcli.cli"}
    assert layer_of("quantcli.engine.job") > layer_of("quantcli.plan.core")
    # `from quantcli.engine import Job` inside engine/job.py is an edge to the package: engine/__init__ imports
    # job, so that is a cycle the graph walk sees
    assert resolve("quantcli.engine.Job", known_modules()) == "quantcli.engine"
