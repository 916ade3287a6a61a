"""Every transformers family HIVE was tried on keeps its recorded status: exact, or refused with the recorded reason
(issue 18). The families run first, each in its own process, two at a time (`tests/family_compatibility.py`); a
family whose status changes fails here, and `python tests/family_compatibility.py update` records the new one.
"error" and "wrong" fail whatever is recorded. About a minute on 2 cores for all families; `-k qwen2` runs only the
matching ones.
"""

import multiprocessing

import pytest
import transformers

from family_compatibility import DEFECTS, comparable, families, is_installed, load_status, run_all


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the family runner forks its workers"),
]

RECORD = load_status()
FAMILIES = families()
UPDATE = "python tests/family_compatibility.py update"


@pytest.fixture(scope="module")
def observed(request) -> dict:
    """The result of every family this session selected, {(kind, family): result}, all run once up front."""
    selected = {
        (item.callspec.params["kind"], item.callspec.params["family"])
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    return run_all([pair for pair in FAMILIES if pair in selected])


@pytest.mark.parametrize("kind, family", FAMILIES, ids=[f"{kind}-{family}" for kind, family in FAMILIES])
def test_family_keeps_its_recorded_status(kind, family, observed):
    if not is_installed(kind, family):
        pytest.skip(f"transformers {transformers.__version__} has no {family!r}")
    result = observed[(kind, family)]
    details = result["message"] + "".join(f"\n    {line}" for line in result.get("traceback") or [])
    assert result["status"] not in DEFECTS, f"{family} is {result['status']} (a product defect): {details}"
    recorded = RECORD[kind].get(family)
    assert recorded is not None, f"{family} has no recorded status; run `{UPDATE}`"
    assert result["status"] == recorded["status"], (
        f"{family} was {recorded['status']} (transformers {RECORD['transformers']}) and is now {result['status']}: "
        f"{details}\nIf that is intended, run `{UPDATE}`."
    )
    if result["status"] == "unbuildable":
        pytest.skip(f"transformers cannot build a tiny {family}: {result['message'][:200]}")
    assert comparable(result["message"]) == comparable(recorded["message"]), (
        f"{family} is refused with another reason:\n  now:      {result['message']}\n  recorded: {recorded['message']}\n"
        f"If that is intended, run `{UPDATE}`."
    )
