"""The package's import graph: no circle, and no lower layer importing a higher one.

Every import statement counts, also those inside functions: a deferred import is still a dependency.
"""

import ast
from pathlib import Path

import reidctl

PACKAGE = Path(reidctl.__file__).parent
# Lowest first; a module may import its own layer or lower ones. engine's registry reaches backends by name only.
LAYERS = ["errors", "config", "io", "tracking", "models", "engine", "export", "triton", "backends", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """reidctl modules that a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reidctl"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("reidctl"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            assert state.get(target) != "open", "import circle: " + " -> ".join(trail[trail.index(target):] + [target])
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_a_higher_layer():
    upward = [f"{source} -> {target}" for source, targets in import_graph().items() for target in targets
              if layer(source) >= 0 and layer(target) > layer(source)]
    assert not upward
