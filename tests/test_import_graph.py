"""The package's import graph, read from the source with `ast`: no circle, and no import from a lower layer to a
higher one (docs/ARCHITECTURE.md draws the layers). Imports inside functions count too."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own room and the rooms of lower layers; rooms that share a layer are
# siblings and import nothing from each other. The package itself (allspark/__init__.py) is the public surface.
LAYERS = (
    ("allspark.errors",),
    ("allspark.distributed", "allspark.threads", "allspark.progress", "allspark.extras", "allspark.encoders",
     "allspark.presets", "allspark.precision"),
    ("allspark.config",),
    ("allspark.runs",),
    ("allspark.data", "allspark.models"),
    ("allspark.predict",),
    ("allspark.engine",),
    ("allspark.viz", "allspark.labeling"),
    ("allspark.demo", "allspark.suggest", "allspark.pretrain"),
    ("allspark.commands",),
    ("allspark.cli",),
    ("allspark.__main__", "allspark"),
)


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of `package` under `root` (a package is its __init__)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` refers to: itself, or the longest prefix that is a module (a name inside it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `module` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in map(lambda name: _target(name, modules), names) if target)
    found.discard(module)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {module: imports(module, path, modules) for module, path in modules.items()}


def room_of(module: str, layers) -> tuple[str, int]:
    """(room, layer index) of a module: the longest room name that is the module or a package above it."""
    rooms = [(room, index) for index, layer in enumerate(layers) for room in layer
             if module == room or module.startswith(room + ".")]
    if not rooms:
        raise LookupError(f"{module} is in no layer; add its room to LAYERS and to docs/ARCHITECTURE.md")
    return max(rooms, key=lambda item: len(item[0]))


def upward_imports(graph: dict[str, set[str]], layers) -> list[str]:
    """'a -> b' for each import of a higher layer, or of a sibling room of the same layer."""
    problems = []
    for module, targets in sorted(graph.items()):
        room, layer = room_of(module, layers)
        for target in sorted(targets):
            other, other_layer = room_of(target, layers)
            if other_layer > layer or (other_layer == layer and other != room):
                problems.append(f"{module} -> {target}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_package_has_no_import_circle():
    assert cycles(import_graph(SRC, "allspark")) == []


def test_no_import_climbs_to_a_higher_layer_or_a_sibling():
    assert upward_imports(import_graph(SRC, "allspark"), LAYERS) == []


def test_every_module_sits_in_a_layer():
    for module in module_names(SRC, "allspark"):
        room_of(module, LAYERS)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


TOY_LAYERS = (("toy.config",), ("toy.data", "toy.models"), ("toy.engine",), ("toy.cli", "toy"))
CLEAN = {
    "toy/__init__.py": "",
    "toy/config.py": "import json\n",
    "toy/data/__init__.py": "",
    "toy/data/io.py": "from toy.config import X\n",
    "toy/data/loaders.py": "from . import io\nfrom .io import read\n",
    "toy/models/__init__.py": "from toy.models.net import Net\n",
    "toy/models/net.py": "import toy.config\n",
    "toy/engine/__init__.py": "",
    "toy/engine/trainer.py": "from toy.data.loaders import build\nfrom toy.models import Net\n",
    "toy/cli.py": "def main():\n    from toy.engine import trainer\n",
}


def test_a_clean_toy_package_passes(tmp_path):
    graph = import_graph(write_package(tmp_path, CLEAN), "toy")
    assert graph["toy.data.loaders"] == {"toy.data.io"}
    assert graph["toy.engine.trainer"] == {"toy.data.loaders", "toy.models"}
    assert graph["toy.cli"] == {"toy.engine.trainer"}
    assert cycles(graph) == [] and upward_imports(graph, TOY_LAYERS) == []


@pytest.mark.parametrize("name,text,problem", [
    ("toy/data/io.py", "from toy.engine.trainer import fit\n", "toy.data.io -> toy.engine.trainer"),
    ("toy/config.py", "def f():\n    import toy.data.io\n", "toy.config -> toy.data.io"),  # inside a function
    ("toy/models/net.py", "from toy.data import io\n", "toy.models.net -> toy.data.io"),  # a sibling room
    ("toy/data/io.py", "from ..engine import trainer\n", "toy.data.io -> toy.engine.trainer"),  # relative
])
def test_an_import_up_or_sideways_is_found(tmp_path, name, text, problem):
    graph = import_graph(write_package(tmp_path, {**CLEAN, name: text}), "toy")
    assert upward_imports(graph, TOY_LAYERS) == [problem]


def test_a_circle_is_found(tmp_path):
    files = {**CLEAN, "toy/engine/a.py": "from toy.engine.b import g\n",
             "toy/engine/b.py": "def g():\n    import toy.engine.a\n"}
    graph = import_graph(write_package(tmp_path, files), "toy")
    assert cycles(graph) == [["toy.engine.a", "toy.engine.b"]]
    assert upward_imports(graph, TOY_LAYERS) == []  # a circle inside one room climbs nowhere


def test_a_module_outside_every_layer_is_named():
    with pytest.raises(LookupError, match="toy.extra is in no layer"):
        room_of("toy.extra", (("toy.config",), ("toy.cli",)))


def test_predict_sits_below_training():
    """Evaluation uses the prediction windows; prediction never reaches back into training."""
    graph = {"allspark.engine.evaluate": {"allspark.predict.windows"},
             "allspark.predict.predictor": {"allspark.engine.evaluate"}, "allspark.predict.windows": set()}
    assert upward_imports(graph, LAYERS) == ["allspark.predict.predictor -> allspark.engine.evaluate"]
