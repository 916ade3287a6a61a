"""The code's layout: imports run one way (modeling_hive ← data ← training ← eval ← the commands), without cycles, sit
at the top of their module unless a comment says why; no file grows past about 400 lines without a stated reason;
every `hive` command is the `cli.py` of its own package; the README's layout table names every folder there is."""

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

from hive_vlm.cli import COMMANDS


REPO = Path(__file__).resolve().parents[1]
# repository folder -> installed package (pyproject's package-dir)
PACKAGES = {"modeling_hive": "modeling_hive", "data": "hive_vlm.data", "training": "hive_vlm.training", "eval": "hive_vlm.eval",
            "bench": "hive_vlm.bench", "model_cards": "hive_vlm.model_cards", "hive_vlm": "hive_vlm"}  # fmt: skip
# The layers, lowest first; a module may import its own layer and the ones below. hive_vlm.files (atomic files) and
# hive_vlm.tiny (tiny backbone configs) are leaves every layer may use: they import only modeling_hive.
LAYERS = [("modeling_hive",), ("hive_vlm.files", "hive_vlm.tiny"), ("hive_vlm.data",), ("hive_vlm.training",), ("hive_vlm.eval",),
          ("hive_vlm",)]  # fmt: skip
MAX_LINES = 400
LONGER = {
    "modeling_hive/modeling_hive.py": "the model, one file as transformers' own modeling files are (the Hub copies it)",
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


# `hive <command>` is the `cli.py` of its own package, `hive_vlm.<command>` with "-" read as "_"; a package named for
# what its command runs rather than for the verb is listed here.
COMMAND_PACKAGES = {"ablate": "hive_vlm.ablation"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_the_cli_module_of_its_own_package(command):
    module = COMMANDS[command][0]
    package = COMMAND_PACKAGES.get(command, "hive_vlm." + command.replace("-", "_"))
    assert module == f"{package}.cli", f"hive {command} runs {module}; its home is {package}.cli"
    path = modules()[module]
    defined = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}
    assert {"add_arguments", "run"} <= defined, f"{path.relative_to(REPO)} defines {sorted(defined)}"


def test_arguments_are_parsed_in_the_commands_cli_modules_only():
    homes = [module for module, _ in COMMANDS.values()]
    assert len(set(homes)) == len(homes), f"two commands share a module: {homes}"
    known = modules()
    clis = {name for name in known if name.rsplit(".", 1)[-1] == "cli"} - {"hive_vlm.cli"}
    assert clis == set(homes), f"cli modules that are no command's: {sorted(clis - set(homes))}"
    parsing = []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        uses_argparse = any(isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names)
                            for node in ast.walk(tree))  # fmt: skip
        defines_arguments = any(isinstance(node, ast.FunctionDef) and node.name == "add_arguments" for node in tree.body)
        if (uses_argparse or defines_arguments) and name not in clis | {"hive_vlm.cli"}:
            parsing.append(name)
    assert not parsing, f"argument parsing outside a command's cli.py: {parsing}"


def _is_reason(comment: str) -> bool:
    text = comment.lstrip("#").strip()
    return bool(text) and not text.startswith(("fmt:", "noqa", "type:", "pragma"))


def imports_inside_functions(path: Path) -> list[str]:
    """`path:line: source` of every import statement inside a function that has no comment saying why."""
    source = path.read_text()
    reasons = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
               if token.type == tokenize.COMMENT and _is_reason(token.string)}  # fmt: skip
    lines = source.splitlines()
    found = set()
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not reasons & set(range(node.lineno, node.end_lineno + 1)):
                found.add((node.lineno, lines[node.lineno - 1].strip()))
    return [f"{path.relative_to(REPO)}:{line}: {text}" for line, text in sorted(found)]


def test_imports_sit_at_the_top_or_say_why():
    paths = [*modules().values(), *sorted((REPO / "scripts").glob("*.py"))]
    hidden = [entry for path in paths for entry in imports_inside_functions(path)]
    assert not hidden, ("imports inside functions; move them to the top of the module, or, for a heavy optional "
                        "dependency loaded on demand, say so in a comment on that line:\n" + "\n".join(hidden))  # fmt: skip


def package_folders() -> dict[str, str]:
    """Every folder holding an `__init__.py` ('hive_vlm/card/') -> its import path ('hive_vlm.card')."""
    found = {}
    for folder, package in PACKAGES.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(REPO / folder).parts
            found[init.parent.relative_to(REPO).as_posix() + "/"] = ".".join([package, *parts])
    return found


def readme_layout() -> dict[str, str]:
    """The README's layout table: folder ('hive_vlm/card/') -> its 'installed as' cell ('hive_vlm.card' or '(files)')."""
    text = (REPO / "README.md").read_text()
    assert "\n## Layout\n" in text, "the README has no '## Layout' section"
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if not row.startswith("| `") or len(cells) < 3:
            continue
        for folder in re.findall(r"`([^`]+/)`", cells[0]):
            assert folder not in table, f"the layout table lists {folder} twice"
            table[folder] = cells[1].strip("`")
    return table


def test_the_readme_layout_table_names_every_folder():
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's top-level folders are unknown")
    top = {name.split("/", 1)[0] + "/" for name in tracked if "/" in name and not name.startswith(".")}
    packages = package_folders()
    table = readme_layout()
    missing = sorted((top | set(packages)) - set(table))
    assert not missing, f"folders the README's layout table does not list: {missing}"
    gone = sorted(folder for folder in table if not (REPO / folder).is_dir())
    assert not gone, f"the README's layout table lists folders that do not exist: {gone}"
    wrong = {folder: (installed, packages.get(folder, "(files)")) for folder, installed in table.items()
             if installed != packages.get(folder, "(files)")}  # fmt: skip
    assert not wrong, f"'installed as' differs from the import path (table, actual): {wrong}"


def test_every_package_folder_is_installed():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {package: folder for folder, package in PACKAGES.items() if package != folder}
    assert sorted(setuptools["packages"]) == sorted(package_folders().values())
