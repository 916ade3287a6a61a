"""The transformers range HIVE supports: declared once, checked when the remote code is imported, quiet inside it.

Runs on the newest and the oldest supported transformers (`python3 dev.py test`).
"""

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers

from isolated import run_isolated
from modeling_hive import compatibility_hive
from modeling_hive.compatibility_hive import MINIMUM_TRANSFORMERS, NEWEST_TESTED_TRANSFORMERS, check_transformers_version
from tiny_hive import build


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


def release(version: str) -> tuple[int, int, int]:
    parts = [int(part) for part in re.match(r"\d+(?:\.\d+)*", version).group().split(".")]
    return tuple((parts + [0, 0])[:3])


def test_the_range_in_the_remote_code_is_the_one_pyproject_declares():
    requirement = next(r for r in PYPROJECT["project"]["dependencies"] if re.match(r"transformers\b", r))
    minimum = re.fullmatch(r"transformers>=([\d.]+)", requirement.replace(" ", "")).group(1)
    assert release(MINIMUM_TRANSFORMERS) == release(minimum)
    assert NEWEST_TESTED_TRANSFORMERS == PYPROJECT["tool"]["hive"]["transformers-newest-tested"]


def test_the_readme_states_the_declared_range():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    newest = ".".join(NEWEST_TESTED_TRANSFORMERS.split(".")[:2])
    assert f"transformers {'.'.join(MINIMUM_TRANSFORMERS.split('.')[:2])} to {newest}" in readme


def test_an_older_transformers_is_refused_naming_both_versions():
    with pytest.raises(ImportError) as error:
        check_transformers_version("5.22.2")
    assert "5.22.2" in str(error.value) and MINIMUM_TRANSFORMERS in str(error.value) and "pip install" in str(error.value)


def test_a_newer_minor_version_warns_and_patch_releases_do_not():
    with pytest.warns(UserWarning, match=f"tested with transformers {MINIMUM_TRANSFORMERS} to {NEWEST_TESTED_TRANSFORMERS}"):
        check_transformers_version("5.99.0")
    major, minor, _ = NEWEST_TESTED_TRANSFORMERS.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transformers_version(f"{major}.{minor}.7")
        check_transformers_version(f"{major}.{minor}.0.dev0")
        check_transformers_version(MINIMUM_TRANSFORMERS)


def test_the_cache_name_is_the_one_the_running_generate_passes(monkeypatch):
    model = build(("vit", "llama"), seed=1, gate=1.0)
    passed = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kwargs: passed.append(sorted(kwargs)) or forward(**kwargs))
    input_ids = torch.randint(3, 100, (1, 5))
    model.generate(input_ids=input_ids, pixel_values=torch.randn(1, 3, 32, 32), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert all(compatibility_hive.CACHE_NAME in names for names in passed[1:])  # every decode step
    other_name = ({"cache", "past_key_values"} - {compatibility_hive.CACHE_NAME}).pop()
    assert passed and not any(other_name in names for names in passed)


@pytest.fixture(scope="module")
def open_gates_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hive")
    build(("vit", "llama"), seed=1, gate=1.0).save_pretrained(folder)
    return folder


def test_loading_the_remote_code_under_an_older_transformers_fails_on_import_with_the_versions(open_gates_folder, tmp_path):
    code = f"""
        import json, transformers
        transformers.__version__ = "5.20.1"  # what a user with an old install has
        from transformers import AutoModelForImageTextToText
        try:
            AutoModelForImageTextToText.from_pretrained({str(open_gates_folder)!r}, trust_remote_code=True)
            print(json.dumps({{"error": None}}))
        except ImportError as error:
            print(json.dumps({{"error": str(error)}}))
    """
    error = run_isolated(code, str(tmp_path))["error"]
    assert error is not None and "5.20.1" in error and MINIMUM_TRANSFORMERS in error


def test_remote_code_under_a_newer_transformers_warns_once(open_gates_folder, tmp_path):
    code = f"""
        import json, warnings
        import transformers
        transformers.__version__ = "5.99.0"
        from transformers import AutoModelForImageTextToText, AutoConfig
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            AutoConfig.from_pretrained({str(open_gates_folder)!r}, trust_remote_code=True)
            AutoModelForImageTextToText.from_pretrained({str(open_gates_folder)!r}, trust_remote_code=True)
            AutoModelForImageTextToText.from_pretrained({str(open_gates_folder)!r}, trust_remote_code=True)
        print(json.dumps([str(w.message) for w in caught if "HIVE was tested" in str(w.message)]))
    """
    warned = run_isolated(code, str(tmp_path))
    assert len(warned) == 1 and "5.99.0" in warned[0] and NEWEST_TESTED_TRANSFORMERS in warned[0]


def test_remote_code_loads_and_generates_without_deprecation_warnings(open_gates_folder, tmp_path):
    # A fresh process, as a Hub user: warnings from modeling_hive are errors, and no FutureWarning, DeprecationWarning
    # or transformers deprecation log may appear while HIVE loads, runs forward and generates with a cache passed as
    # `cache` (current in every supported version). `past_key_values` is silent before 5.25 and, from 5.25 on, gets
    # transformers' own FutureWarning naming `cache`, as transformers' models do.
    code = f"""
        import io, json, logging, warnings
        import torch
        import transformers
        from transformers import AutoModelForImageTextToText, DynamicCache

        log = io.StringIO()
        transformers.utils.logging.get_logger("transformers").addHandler(logging.StreamHandler(log))
        ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        greedy = dict(do_sample=False, pad_token_id=0, max_new_tokens=4)

        def deprecations(caught):
            return [f"{{w.category.__name__}}: {{w.message}}" for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            warnings.simplefilter("always", DeprecationWarning)
            warnings.filterwarnings("error", module=r".*modeling_hive")
            model = AutoModelForImageTextToText.from_pretrained({str(open_gates_folder)!r}, trust_remote_code=True).eval()
            with torch.no_grad():
                model(input_ids=ids, pixel_values=pixels, use_cache=True)
                model(input_ids=ids, cache=DynamicCache(config=model.config.text_config), use_cache=True)
            first = model.generate(input_ids=ids, pixel_values=pixels, return_dict_in_generate=True, **greedy)
            returned = first["cache" if "cache" in first else "past_key_values"]
            model.generate(input_ids=first.sequences, attention_mask=torch.ones_like(first.sequences), cache=returned, **greedy)
            model.generate(input_ids=ids, pixel_values=pixels, cache=DynamicCache(config=model.config.text_config), **greedy)
            model.generate(input_ids=ids, pixel_values=pixels, num_beams=2, **greedy)
            model.generate(input_ids=ids, pixel_values=pixels, use_cache=False, **greedy)
        quiet = deprecations(caught)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                model(input_ids=ids, past_key_values=DynamicCache(config=model.config.text_config), use_cache=True)
        old_name = deprecations(caught)
        logged = [line for line in log.getvalue().splitlines() if "deprecat" in line.lower()]
        print(json.dumps({{"quiet": quiet, "old_name": old_name, "logged": logged}}))
    """
    result = run_isolated(code, str(tmp_path))
    assert result["quiet"] == [] and result["logged"] == [], result
    if release(transformers.__version__) >= (5, 25, 0):
        assert len(result["old_name"]) == 1 and "Use `cache` instead" in result["old_name"][0], result
    else:
        assert result["old_name"] == [], result
