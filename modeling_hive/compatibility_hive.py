"""The transformers this code runs under: the supported range, checked on import, and the generation cache's name.

A Hub checkpoint's code runs under its user's transformers, not the one HIVE was developed with, so everything here
is read from the running library. The range mirrors pyproject.toml (the dependency's lower bound and
`[tool.hive] transformers-newest-tested`); a test keeps the two equal.
"""

import inspect
import re
import warnings

import transformers


MINIMUM_TRANSFORMERS = "5.23.0"
NEWEST_TESTED_TRANSFORMERS = "5.25.0"


def _release(version: str) -> tuple[int, ...]:
    """'5.25.0.dev0' -> (5, 25, 0): pre-releases count as their release."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def check_transformers_version(installed: str = transformers.__version__) -> None:
    """Raises ImportError below the minimum; warns above the newest minor version tested (patch releases pass)."""
    if _release(installed) < _release(MINIMUM_TRANSFORMERS):
        raise ImportError(
            f"HIVE needs transformers {MINIMUM_TRANSFORMERS} or newer and found {installed}: "
            f"pip install -U 'transformers>={MINIMUM_TRANSFORMERS}'."
        )
    if _release(installed)[:2] > _release(NEWEST_TESTED_TRANSFORMERS)[:2]:
        warnings.warn(
            f"HIVE was tested with transformers {MINIMUM_TRANSFORMERS} to {NEWEST_TESTED_TRANSFORMERS}; transformers "
            f"{installed} is installed. If generation or loading misbehaves, install "
            f"'transformers<={NEWEST_TESTED_TRANSFORMERS}' and report it.",
            UserWarning,
            stacklevel=2,
        )


check_transformers_version()  # before any other transformers import, which could fail cryptically on an old version

from transformers import GenerationMixin  # noqa: E402
from transformers.utils.deprecation import deprecate_kwarg  # noqa: E402

# What generate() calls the cache it hands to `forward`: `cache` since 5.25, `past_key_values` before.
CACHE_NAME = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


def deprecate_past_key_values(forward):
    """From 5.25 on, `forward(past_key_values=...)` warns and becomes `cache`, exactly as in transformers' own models;
    before 5.25 `past_key_values` is the current name and passes silently."""
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)(forward)
    return forward


def resolve_cache(cache, past_key_values):
    """The one cache passed under either name (None if neither); two different caches raise. Before 5.25 both names
    are current (generate passes `past_key_values`, new code may pass `cache`)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the generation cache once, as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values


def generate_cache_kwargs(kwargs: dict) -> dict:
    """`generate`'s keyword arguments with a `cache` to continue from under the name the running transformers knows:
    before 5.25 generate knows only `past_key_values`; from 5.25 on it takes `cache` and renames the old name itself."""
    if CACHE_NAME == "past_key_values" and "cache" in kwargs:
        kwargs["past_key_values"] = resolve_cache(kwargs.pop("cache"), kwargs.pop("past_key_values", None))
    return kwargs


__all__ = ["CACHE_NAME", "MINIMUM_TRANSFORMERS", "NEWEST_TESTED_TRANSFORMERS", "check_transformers_version", "deprecate_past_key_values", "generate_cache_kwargs", "resolve_cache"]
