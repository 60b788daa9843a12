"""The package's shape: no import cycle, a command line that nothing imports and that starts without torch,
short functions, and one description of the search Flow that the YAML files follow."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "clip_image_encoder"
MAX_FUNCTION_LINES = 60
HEAVY = ("torch", "transformers", "jina", "docarray", "faiss", "onnxruntime")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere: at the top, in functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name if name in MODULES else name.rpartition(".")[0] for name in names}
    return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_the_package_has_no_import_cycle():
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in GRAPH[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while (member := stack.pop()) != module:
                component.append(member)
            if component:
                cycles.append(sorted([module, *component]))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


LAYERS = ("errors", "extras", "images", "models", "config", "encoding", "search", "bulk", "training", "service", "cli")
"""The package's folders (and bottom modules) from the bottom up, as the README's layout draws them."""


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1]) if "." in module else -1


def test_every_import_points_down_the_layers():
    upward = sorted(
        f"{module} -> {imported}"
        for module, imports in GRAPH.items()
        for imported in imports
        if _layer(imported) > _layer(module)
    )
    assert upward == []


def test_the_graph_sees_function_level_imports():
    """The cycle test reads imports inside functions too (the command line's handlers import there)."""
    assert "clip_image_encoder.encoding.images" in GRAPH["clip_image_encoder.cli.similarity"]


def test_nothing_outside_the_command_line_imports_it():
    importers = {
        module
        for module, imported in GRAPH.items()
        if not module.startswith("clip_image_encoder.cli")
        and any(name.startswith("clip_image_encoder.cli") for name in imported)
    }
    assert importers == set()


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["embed", "--help"], ["train", "--help"], ["options"], ["health", "--port", "9", "--timeout", "0.2"]],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_quick_commands_start_without_torch(argv):
    """``--help``, ``options`` and the container's HEALTHCHECK (``health``) import no model library."""
    script = (
        "import json, sys\n"
        "from clip_image_encoder.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(set({list(HEAVY)!r}) & set(sys.modules))), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert json.loads(done.stderr.strip().splitlines()[-1]) == [], done.stderr


def _flow_file(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["executors"]


def test_flow_yml_is_the_search_flow():
    from clip_image_encoder.service.flow import SEARCH_FLOW

    executors = _flow_file(REPO / "flow.yml")
    assert [(e["name"], e["uses"], e.get("uses_requests", {})) for e in executors] == [
        (step.name, step.config, step.uses_requests) for step in SEARCH_FLOW
    ]


def test_deploy_flow_yml_holds_the_deployed_executors_in_order():
    from clip_image_encoder.service.flow import SEARCH_FLOW

    executors = _flow_file(REPO / "deploy" / "flow.yml")
    assert [(e["name"], e["uses"].removeprefix("docker://").split(":")[0]) for e in executors] == [
        (step.name, step.image) for step in SEARCH_FLOW if step.image is not None
    ]


def test_every_training_method_name_has_a_method():
    from clip_image_encoder.training.config import METHOD_NAMES
    from clip_image_encoder.training.methods import METHODS

    assert tuple(METHODS) == METHOD_NAMES


def _readme_tree() -> set[str]:
    """The paths that the README's layout lists under ``clip_image_encoder/``: ``a/b.py``, folders as ``a/``."""
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    block = layout[layout.index("```\n") + 4 : layout.index("\n```\n", layout.index("```") + 3)]
    listed, folders = set(), ["clip_image_encoder"]
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        depth = (len(line) - len(line.lstrip())) // 2
        if depth == 0 or not (name.endswith(".py") or name.endswith("/")):
            continue
        folders = folders[:depth]
        path = "/".join([*folders[1:], name])
        listed.add(path)
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return listed


def test_the_readme_layout_lists_every_module():
    """Each module is listed, or lies in a listed folder whose modules are not listed one by one."""
    listed = _readme_tree()
    modules = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    leaf_folders = {
        path
        for path in listed
        if path.endswith("/") and not any(other != path and other.startswith(path) for other in listed)
    }
    unlisted = {
        module for module in modules if module not in listed and not any(module.startswith(f) for f in leaf_folders)
    }
    missing = {path for path in listed if not (PACKAGE / path).exists()}
    assert (unlisted, missing) == (set(), set())
