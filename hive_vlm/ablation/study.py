"""The ablation study: every fusion with every seed on the shared backbones and data, then the report (`hive ablate`'s
library; the command and its phases are in `cli`)."""

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .fusions import match_budgets
from .report import write_report
from .run import quiet, run_isolated
from .settings import HiveStudySettings
from .shared import prepare_shared, shared_path


logger = logging.getLogger(__name__)


def _run_identity(study: dict, fusion: str) -> dict:
    """What one run of `fusion` depends on: everything but the lists of fusions and seeds (so a study can grow or
    shrink) and the widths `--match-params` gave the other fusions."""
    kept = {key: value for key, value in study.items() if key not in ("fusions", "seeds", "default_study", "benchmarks")}
    widths = (kept.get("fusion") or {}).get("intermediate_sizes") or {}
    return {**kept, "fusion": {**(kept.get("fusion") or {}), "intermediate_sizes": widths.get(fusion)}}


def run_ablation(recipe, study: HiveStudySettings, out, isolate: bool = True, threads: int | None = None) -> dict:
    """Prepares the shared backbones and data, runs every fusion with every seed (finished runs are kept and
    reused), and writes the report. Returns the report's JSON content.

    Args:
        recipe (`HiveRecipe`): the recipe (backbones, data, stages, evaluations).
        study (`HiveStudySettings`): what to compare (`load_study` returns both).
        out (`str` or `os.PathLike`): the study's folder (`shared/`, `runs/`, `ablation.md`, `ablation.json`, `plots/`).
        isolate (`bool`): one process per run (honest per-run peak memory); False runs everything in this process.
        threads (`int`, *optional*): torch threads per run (torch's default when unset). On a machine shared with
            other jobs, 1 avoids oversubscribed threads spinning against each other (several times slower).

    Example:
        >>> recipe, study = load_study("recipes/tiny-shapes.yaml", quick=True)  # doctest: +SKIP
        >>> report = run_ablation(recipe, study, "/tmp/ablation-quick")  # doctest: +SKIP
        >>> sorted(report["aggregate"])  # doctest: +SKIP
        ['flat', 'hive-all-levels', 'hive-paired', 'qformer', 'shared-softmax', 'single-level']
    """
    quiet()
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if study.default_study:
        print(f"[ablate] the recipe has no `study` section: the default fusions {study.fusions} and seeds {study.seeds}", flush=True)
    print(f"[ablate] shared backbones and data in {out / 'shared'}", flush=True)
    shared = out / "shared"
    meta = prepare_shared(recipe, study, shared)
    matched = None
    if study.match_params:
        matched = match_budgets(study.fusions, "hive-paired", shared_path(shared, meta["vision"]), shared_path(shared, meta["text"]),
                                meta["image_token_id"], study.fusion, vocab_size=meta["vocab_size"])  # fmt: skip
        study.fusion.intermediate_sizes = {name: row["width"] for name, row in matched.items() if row["width"]}
        print(f"[ablate] matched budgets: {matched}", flush=True)
    runs = []
    for seed in study.seeds:
        for name in study.fusions:
            run_dir = out / "runs" / f"{name}-seed{seed}"
            spec = {"fusion": name, "seed": seed, "shared": str(shared), "out": str(run_dir), "study": asdict(study), "threads": threads}
            if (run_dir / "result.json").is_file():
                kept = json.loads((run_dir / "result.json").read_text())
                if _run_identity(kept.get("study") or {}, name) != _run_identity(json.loads(json.dumps(spec["study"])), name):
                    raise ValueError(f"{run_dir} holds a run with other settings; pass a new --out (or delete that folder).")
                print(f"[ablate] {name} seed {seed}: kept from an earlier run", flush=True)
                runs.append(kept)
                continue
            print(f"[ablate] {name} seed {seed} (t={time.perf_counter() - started:.0f}s)", flush=True)
            result = run_isolated("hive_vlm.ablation.run:run_fusion", spec, isolate)
            runs.append(result)
            scores = ", ".join(f"{label} {next(iter(v for v in s.values() if isinstance(v, (int, float))))}"
                               for label, s in result["final"].items())  # fmt: skip
            print(f"[ablate] {name} seed {seed}: {scores}; {result['timing']['wall_seconds']:.0f}s", flush=True)
    report = write_report(out, study, meta, runs, matched)
    print(f"[ablate] report: {out / 'ablation.md'} ({time.perf_counter() - started:.0f}s)", flush=True)
    return report
