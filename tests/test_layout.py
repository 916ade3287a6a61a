"""The code's layout: imports run one way (modeling_hive ← data ← training ← eval ← the commands), without cycles, and
no file grows past about 400 lines without a stated reason."""

import ast
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
# repository folder -> installed package (pyproject's package-dir)
PACKAGES = {"modeling_hive": "modeling_hive", "data": "hive_vlm.data", "training": "hive_vlm.training", "eval": "hive_vlm.eval",
            "bench": "hive_vlm.bench", "hive_vlm": "hive_vlm"}  # fmt: skip
# The layers, lowest first; a module may import its own layer and the ones below. hive_vlm.files (atomic files) and
# hive_vlm.tiny (tiny backbone configs) are leaves every layer may use: they import only modeling_hive.
LAYERS = [("modeling_hive",), ("hive_vlm.files", "hive_vlm.tiny"), ("hive_vlm.data",), ("hive_vlm.training",), ("hive_vlm.eval",),
          ("hive_vlm",)]  # fmt: skip
MAX_LINES = 400
LONGER = {
    "modeling_hive/modeling_hive.py": "the model, one file as transformers' own modeling files are (the Hub copies it)",
    "modeling_hive/processing_hive.py": "the processor, one file as transformers' own processing files are (the Hub copies it)",
    "data/shapes.py": "hive-shapes' definition: its vocabulary, rendering and question rules are read together",
}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if folder == "eval" and "metrics" in parts:  # evaluate modules: loaded by path, self-contained
                continue
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known) -> set[str]:
    """The project modules `name` imports, anywhere in the file (a lazy import counts as much as a top-level one)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known}
    return found - {name}


def layer(name: str) -> int:
    return max(index for index, prefixes in enumerate(LAYERS) if any(name == p or name.startswith(p + ".") for p in prefixes))


def test_imports_run_one_way():
    known = modules()
    wrong = [f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
             for name, path in known.items() for target in sorted(imports(name, path, known)) if layer(target) > layer(name)]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}  # a package's own __init__
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_files_stay_short_or_say_why():
    long = {}
    for path in modules().values():
        relative = str(path.relative_to(REPO))
        count = len(path.read_text().splitlines())
        if count > MAX_LINES and relative not in LONGER:
            long[relative] = count
    assert not long, f"over {MAX_LINES} lines: {long}; split by concept, or add the file and the reason to LONGER"
    for relative in LONGER:
        assert len((REPO / relative).read_text().splitlines()) > MAX_LINES, f"{relative} is short now: drop it from LONGER"


@pytest.mark.parametrize("command", ["train", "ablate", "transfer", "demo", "visualize", "card", "push", "eval", "data", "bench"])
def test_each_command_lives_in_its_own_module(command):
    from hive_vlm.cli import COMMANDS

    module = COMMANDS[command][0]
    assert module in modules(), module
    # the application's commands each have a package (hub holds card and push); the layers' own commands a cli module
    rooms = {"train": "hive_vlm.train", "ablate": "hive_vlm.ablation", "transfer": "hive_vlm.transfer", "demo": "hive_vlm.demo", "visualize": "hive_vlm.visualize",
             "card": "hive_vlm.hub", "push": "hive_vlm.hub", "eval": "hive_vlm.eval", "data": "hive_vlm.data", "bench": "hive_vlm.bench"}  # fmt: skip
    assert module.startswith(rooms[command] + "."), module
