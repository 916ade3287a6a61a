"""The benchmarks `hive eval` runs, by name: one adapter per benchmark, shared by `hive eval` and the studies."""

from .classification import HiveZeroShotClassificationBenchmark
from .gqa import HiveGQABenchmark
from .hive_shapes import HiveShapesBenchmark
from .llava_qa import HiveLlavaQABenchmark
from .mme import HiveMMEBenchmark
from .okvqa import HiveOKVQABenchmark
from .scienceqa import HiveScienceQABenchmark


# every benchmark `hive eval --benchmark` takes: the adapters below, and linear-probe (an encoder's, no adapter)
NAMES = (
    "mme", "gqa", "okvqa", "scienceqa", "hive-shapes", "llava-qa", "classification", "classification-with-labels",
    "linear-probe",
)  # fmt: skip


def benchmarks() -> dict:
    """A fresh adapter of every benchmark, by name."""
    adapters = [
        HiveMMEBenchmark(),
        HiveGQABenchmark(),
        HiveOKVQABenchmark(),
        HiveScienceQABenchmark(),
        HiveShapesBenchmark(),
        HiveLlavaQABenchmark(),
        HiveZeroShotClassificationBenchmark(),
        HiveZeroShotClassificationBenchmark(with_labels=True),
    ]
    return {adapter.name: adapter for adapter in adapters}


def benchmark_adapter(name: str, image_root: str | None = None):
    """The adapter `hive eval --benchmark name` scores with, by name (`hive ablate` scores a recipe's evaluations
    through it); `image_root` is where a LLaVA-format file's relative image paths point."""
    adapters = benchmarks()
    if name not in adapters:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(sorted(adapters))}.")
    if image_root is None:
        return adapters[name]
    try:
        return type(adapters[name])(image_root=image_root)
    except TypeError:
        raise ValueError(f"benchmark {name!r} reads its images from its own files; image_root does not apply.") from None
