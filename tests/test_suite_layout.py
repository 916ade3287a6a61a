"""The test suite's own layout: test files share code through helper modules and `conftest.py`, never each other."""

import ast
from pathlib import Path


TESTS = Path(__file__).resolve().parent


def imported_modules(tree):
    """Dotted names of the modules a file imports (`from tests import test_x` gives `tests.test_x`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            yield module
            if node.level > 0 or module == "tests":  # the names may be modules of this folder
                yield from (f"{module}.{alias.name}".lstrip(".") for alias in node.names)


def test_no_test_file_imports_another_test_file():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for module in imported_modules(ast.parse(path.read_text(), filename=str(path))):
            if any(part.startswith("test_") for part in module.split(".")):
                offenders.append(f"{path.name} imports {module}")
    assert not offenders, "move shared code to a helper module or conftest.py: " + "; ".join(offenders)
