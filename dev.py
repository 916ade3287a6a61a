#!/usr/bin/env python3
"""Set up this clone's virtual environments and run the HIVE demo or the tests. Needs only python3 (3.10+).

Usage:
    python3 dev.py demo [hive demo args]   # .venv, then `hive demo --out demo/ ARGS` (demo-2/, ... once demo/ is used)
    python3 dev.py test [pytest args]      # .venv: the whole suite on the newest transformers (ARGS go to this run);
                                           # .venv-oldest: OLDEST_TESTS on the oldest transformers pyproject allows

A venv is set up as the README's "Install by hand" says: torch's CPU build first, then this project with its dev
extras. It keeps a stamp of pyproject.toml and its pins (torch, transformers); while the stamp matches, pip is not run.
Delete the venv's folder to set it up from scratch.
"""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PYPROJECT = ROOT / "pyproject.toml"
# The CPU build. It must be installed before anything that requires torch: any other request pulls CUDA wheels.
TORCH = "torch==2.13.0"
# What .venv-oldest runs: the model and its transformers integration.
OLDEST_TESTS = [
    "tests/test_modeling.py",
    "tests/test_generation.py",
    "tests/test_compile.py",
    "tests/test_inspection.py",
    "tests/test_shared_softmax.py",
    "tests/test_compatibility.py",
    "tests/test_processor.py",
    "tests/test_pipelines.py",
    "tests/test_hub.py",
    "tests/test_transformers_common.py",
]
TEST_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped)\b")


def run(*cmd, env=None):
    cmd = [str(part) for part in cmd]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def oldest_transformers():
    """The X of pyproject's `transformers>=X` dependency, as X.Y.Z."""
    match = re.search(r'"transformers\s*>=\s*(\d+(?:\.\d+)*)', PYPROJECT.read_text())
    if match is None:
        sys.exit("dev.py: pyproject.toml has no 'transformers>=X' dependency")
    parts = match.group(1).split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


def setup_venv(name, pins=()):
    """Create or update the venv ROOT/name unless its stamp matches; returns its python."""
    venv = ROOT / name
    python = venv / "bin" / "python"
    stamp = venv / "hive-setup.stamp"
    digest = hashlib.sha256(PYPROJECT.read_bytes() + " ".join([TORCH, *pins]).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        print(f"dev.py: {name} is up to date with pyproject.toml", flush=True)
        return python
    steps = [
        [sys.executable, "-m", "venv", venv],
        [python, "-m", "pip", "install", "--upgrade", "pip"],
        [python, "-m", "pip", "install", TORCH],
        [python, "-m", "pip", "install", "-e", ".[dev]", *pins],
    ]
    for step in steps:
        if run(*step) != 0:
            sys.exit(f"dev.py: setting up {name} failed")
    stamp.write_text(digest)
    return python


def transformers_version(python):
    code = "import importlib.metadata as m; print(m.version('transformers'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() or "?"


def pytest(python, args, env):
    """Run pytest, echoing its output; returns its exit code and its closing line."""
    cmd = [str(python), "-m", "pytest", "-q", *args]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    closing = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        closing = line.strip() or closing
    return proc.wait(), closing


def fetch_common_tests(python):
    """transformers' common model tests, from the sdist of the venv's own transformers (tests/transformers_common.py)."""
    if run(python, ROOT / "tests" / "transformers_common.py", "fetch") != 0:
        sys.exit("dev.py: fetching transformers' common model tests failed")


def test(args):
    # Missing common model tests fail the run instead of skipping.
    env = {**os.environ, **TEST_ENV, "HIVE_REQUIRE_COMMON_TESTS": "1"}
    python = setup_venv(".venv")
    fetch_common_tests(python)
    runs = [(".venv", "whole suite", python, transformers_version(python))]
    print(f"\n== whole suite on transformers {runs[0][3]} (.venv) ==", flush=True)
    results = [pytest(python, args, env)]

    oldest = setup_venv(".venv-oldest", [f"transformers=={oldest_transformers()}"])
    fetch_common_tests(oldest)
    runs.append((".venv-oldest", "model tests", oldest, transformers_version(oldest)))
    print(f"\n== model tests on transformers {runs[1][3]} (.venv-oldest) ==", flush=True)
    results.append(pytest(oldest, OLDEST_TESTS, env))

    print("\n== dev.py test ==")
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for (venv, what, _, version), (code, closing) in zip(runs, results):
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{venv:<13} transformers {version:<8} {what:<12} {status}: {closing}")
        for count, word in PYTEST_COUNT.findall(closing):
            totals["failed" if word.startswith("error") else word] += int(count)
    # One plain closing line for both runs, so that the last line counts every test that ran.
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped", flush=True)
    return 0 if all(code == 0 for code, _ in results) else 1


def demo_folder():
    """demo/, or demo-2/, demo-3/, ... when earlier runs filled it (hive demo writes only to a new or empty folder)."""
    for n in range(1, 1000):
        folder = ROOT / ("demo" if n == 1 else f"demo-{n}")
        if not folder.exists() or not any(folder.iterdir()):
            return folder
    sys.exit("dev.py: demo/ to demo-999/ are all taken; pass --out")


def demo(args):
    python = setup_venv(".venv")
    out = [] if any(arg == "--out" or arg.startswith("--out=") for arg in args) else ["--out", demo_folder()]
    return run(python.parent / "hive", "demo", *out, *args)


def main():
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
