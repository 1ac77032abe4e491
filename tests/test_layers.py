"""The package's import graph: no circle, and no lower layer importing a higher one.

Every import counts: statements anywhere in a module (a deferred import is still a dependency), relative ones
resolved against the module's package, and imports by name (``importlib.import_module``, ``__import__``, or any
call given a "reidctl.x" module name), which only the backend registry may make. The checks take a module's source
text, so the tests below also feed them the ways around the rules and see each reported.
"""

import ast
import re
from pathlib import Path

import pytest

import reidctl

PACKAGE = Path(reidctl.__file__).parent
# Lowest first; a module may import its own layer or lower ones. core is what every backend, the export and the Triton
# client share (the Detector, pre- and postprocessing, devices); apps are what reidctl does with them (detect's
# pipeline, bench, capacity, recommend, parity).
LAYERS = ["errors", "config", "io", "tracking", "models", "core", "export", "triton", "backends", "apps", "cli"]
# The one module that imports modules by name: the backend registry reaches backends (a higher layer) that way, so
# that using one backend never imports the others.
REGISTRY = "reidctl.core.registry"
IMPORT_FUNCTIONS = {"import_module", "__import__"}
MODULE_NAME = re.compile(r"reidctl(\.\w+)+")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """What the import statements of ``module`` (whose text is ``source``) name, anywhere in it, relative ones
    resolved: each module and each ``module.name`` of a from-import (a submodule where one exists)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = package_of(module, is_package).split(".")
                anchor = ".".join(package[: len(package) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "reidctl" or name.startswith("reidctl.")}


def string_imports(source: str) -> list[str]:
    """Each import by name in ``source``: a call of import_module or __import__ (whatever it is given), and any call
    given a literal "reidctl.x" module name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
        names_module = any(isinstance(a, ast.Constant) and isinstance(a.value, str) and MODULE_NAME.fullmatch(a.value)
                           for a in arguments)
        if function in IMPORT_FUNCTIONS or names_module:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def dependencies(source: str, module: str, is_package: bool, modules) -> set[str]:
    """The package's modules that ``module`` imports with statements (itself left out)."""
    return {name for name in imported_names(source, module, is_package) if name in modules and name != module}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def layer_violations(source: str, module: str, is_package: bool, modules) -> list[str]:
    """What in ``module``'s text breaks the layering: an import of a higher layer, or an import by name outside the
    registry."""
    upward = [f"{module} -> {target}" for target in sorted(dependencies(source, module, is_package, modules))
              if layer(module) >= 0 and layer(target) > layer(module)]
    by_name = [] if module == REGISTRY else [f"{module} imports by name, {call}" for call in string_imports(source)]
    return upward + by_name


def violations_of(path: Path, added: str = "") -> list[str]:
    """``layer_violations`` of a package file, with ``added`` appended to its text."""
    return layer_violations(path.read_text() + added, module_name(path), path.name == "__init__.py",
                            package_modules())


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: dependencies(path.read_text(), name, path.name == "__init__.py", modules)
            for name, path in modules.items()}


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


def test_no_module_imports_a_higher_layer_or_by_name():
    assert [problem for path in sorted(PACKAGE.rglob("*.py")) for problem in violations_of(path)] == []


def test_only_the_registry_imports_by_name():
    """The registry's exemption names the module that does it: moved elsewhere, the exemption would go stale."""
    by_name = {name for name, path in package_modules().items() if string_imports(path.read_text())}
    assert by_name == {REGISTRY}


# -- the ways around the rules, each reported --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("file", "added", "reported"),
    [
        ("apps/stats.py", "from ..cli import app\n", "reidctl.apps.stats -> reidctl.cli"),
        ("io/atomic.py", 'import importlib\nimportlib.import_module("reidctl.cli.bench")\n',
         "reidctl.io.atomic imports by name, line {line}: importlib.import_module('reidctl.cli.bench')"),
        ("models/loader.py", "def late():\n    from ..core import detector\n",
         "reidctl.models.loader -> reidctl.core.detector"),
        ("tracking/__init__.py", "from .. import triton\n", "reidctl.tracking -> reidctl.triton"),
        ("io/writers.py", "from ..apps.pipeline import Outputs\n", "reidctl.io.writers -> reidctl.apps.pipeline"),
        ("io/paths.py", "__import__('reidctl.apps.pipeline')\n",
         "reidctl.io.paths imports by name, line {line}: __import__('reidctl.apps.pipeline')"),
        ("config.py", "import importlib.util\nimportlib.util.find_spec('reidctl.triton.server')\n",
         "reidctl.config imports by name, line {line}: importlib.util.find_spec('reidctl.triton.server')"),
    ],
)
def test_a_way_around_the_layers_is_reported(file, added, reported):
    path = PACKAGE / file
    assert violations_of(path) == []
    last_line = len(path.read_text().splitlines()) + len(added.splitlines())
    assert reported.format(line=last_line) in violations_of(path, added)


def test_relative_imports_resolve_against_the_package():
    assert imported_names("from . import nms\nfrom .frames import rescale\n", "reidctl.core.detector", False) == {
        "reidctl.core", "reidctl.core.nms", "reidctl.core.frames", "reidctl.core.frames.rescale"}
    assert imported_names("from . import detect\n", "reidctl.cli", True) == {"reidctl.cli", "reidctl.cli.detect"}
    assert imported_names("from ..errors import ReidctlError\n", "reidctl.apps.stats", False) == {
        "reidctl.errors", "reidctl.errors.ReidctlError"}


def test_other_strings_and_calls_are_not_imports():
    assert string_imports('app = Typer(name="reidctl")\nlog("reidctl.toml is not a module")\nopen("x.py")\n') == []
