"""Run Python in a fresh process, offline, where this project cannot be imported (as a Hub user's machine)."""

import json
import os
import subprocess
import sys
import textwrap


# Imported first in the child: any import of our own packages fails, so only the folder's remote code can serve.
_BLOCKER = """
import sys
class _BlockProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_hive", "hive_vlm"):
            raise ModuleNotFoundError(f"{name} is blocked: the project must not be importable here")
        return None
sys.meta_path.insert(0, _BlockProject())
"""


def run_isolated(code: str, workdir: str, timeout: int = 300) -> dict:
    """Runs `code` in a fresh interpreter; the code must print one JSON line last. Returns that JSON."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=os.path.join(workdir, "hf_modules"),
        TOKENIZERS_PARALLELISM="false",
    )
    script = _BLOCKER + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
