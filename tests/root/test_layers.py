"""The layers import one way: runtime -> envs -> config, bundle -> agents -> workflows -> cli.

import-linter cannot see `envs/` and `agents/` (they install as `hyperpilot.envs` and
`hyperpilot.agents` through setuptools' package-dir), so this reads the three source
folders itself, with `ast`, every import statement included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"hyperpilot": ROOT / "hyperpilot", "hyperpilot.envs": ROOT / "envs"}
SOURCES["hyperpilot.agents"] = ROOT / "agents"

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS = (
    ("runtime", ("hyperpilot", "hyperpilot._version", "hyperpilot.runtime")),
    ("envs", ("hyperpilot.envs",)),
    (
        "config and bundle",
        ("hyperpilot.config", "hyperpilot.schema", "hyperpilot.bundle"),
    ),
    ("agents", ("hyperpilot.agents", "hyperpilot.integrations")),
    (
        "workflows",
        (
            "hyperpilot.training",
            "hyperpilot.evaluation",
            "hyperpilot.report",
            "hyperpilot.metrics",
            "hyperpilot.bench",
            "hyperpilot.quality",
            "hyperpilot.ablations",
            "hyperpilot.ray_backend",
        ),
    ),
    ("cli", ("hyperpilot.cli",)),
)

# Imported inside functions on purpose: optional extras that may be missing, and
# data sources read only when a family first draws an instance (so importing the
# envs, and with them the `Pilot`, stays light).
LAZY_OK = frozenset(
    {
        "ray",
        "schedulefree",
        "prodigyopt",
        "lightning",
        "transformers",
        "sklearn",
        "statsmodels",
        "PIL",
        "matplotlib",  # its image reader and sample data
        "pydoc_data",  # the Python reference manual's text
    }
)


def module_files() -> dict[str, Path]:
    """Every source module by its installed name."""
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if "pretrained" in path.parts or "__pycache__" in path.parts:
                continue
            if (
                package == "hyperpilot"
                and path.parent != folder
                and not (path.parent / "__init__.py").exists()
            ):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def layer_of(module: str) -> int:
    """The layer index of `module` (the longest matching prefix wins)."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length and prefix != "hyperpilot":
                best, best_length = index, len(prefix)
    if best is None and module == "hyperpilot":
        return 0
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return best


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """`(imported module, line, inside a function)` for every import statement."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[
                        : len(package.split(".")) - child.level + 1
                    ]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    name = candidate if candidate in MODULES else base
                    found.append((name, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def internal_edges() -> list[tuple[str, str, int, bool]]:
    edges = []
    for module, path in MODULES.items():
        for name, line, in_function in imports_of(module, path):
            if name == "hyperpilot" or name.startswith("hyperpilot."):
                target = name
                while target not in MODULES and "." in target:
                    target = target.rpartition(".")[0]
                edges.append((module, target, line, in_function))
    return edges


EDGES = internal_edges()


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_point_down_or_sideways():
    upward = [
        f"{src} (layer {LAYERS[layer_of(src)][0]}) imports {dst} "
        f"(layer {LAYERS[layer_of(dst)][0]}) at line {line}"
        for src, dst, line, _ in EDGES
        if layer_of(dst) > layer_of(src)
    ]
    assert not upward, "\n".join(upward)


def test_nothing_imports_the_cli():
    users = [src for src, dst, _, _ in EDGES if dst == "hyperpilot.cli"]
    assert not users


def test_envs_never_import_agents():
    wrong = [
        (src, dst)
        for src, dst, _, _ in EDGES
        if src.startswith("hyperpilot.envs") and dst.startswith("hyperpilot.agents")
    ]
    assert not wrong


def test_no_import_cycles():
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for src, dst, _, _ in EDGES:
        if dst != src and dst != "hyperpilot":  # the package facade loads lazily
            graph[src].add(dst)
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_only_for_optional_dependencies():
    lazy = [
        f"{path.relative_to(ROOT)}:{line} imports {name} inside a function"
        for module, path in MODULES.items()
        for name, line, in_function in imports_of(module, path)
        if in_function and name.split(".")[0] not in LAZY_OK
    ]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("import hyperpilot.cli", "hyperpilot.cli"),
        ("from hyperpilot.agents import pilot", "hyperpilot.agents.pilot"),
    ],
    ids=["plain-import", "from-import-of-a-module"],
)
def test_the_checker_sees_imports(tmp_path, source, target):
    path = tmp_path / "probe.py"
    path.write_text(f"def f():\n    {source}\n")
    assert (target, 2, True) in imports_of("hyperpilot.envs.probe", path)
