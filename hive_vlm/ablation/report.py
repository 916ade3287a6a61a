"""`hive ablate`'s report: mean ± std over seeds, the seed-noise verdicts, a markdown file, a JSON file and PNG plots.

Seed-noise rule: a fusion's difference from hive-paired on a metric is *within the seed noise* when
|mean difference| <= std(fusion) + std(hive-paired) (sample standard deviations over seeds). With one seed nothing
can be told apart, and the report says so.

Example:
    >>> aggregate([{"fusion": "flat", "metrics": {"test/all": 40.0}}, {"fusion": "flat", "metrics": {"test/all": 44.0}}])
    {'flat': {'test/all': {'mean': 42.0, 'std': 2.8284, 'n': 2}}}
"""

import dataclasses
import os
import statistics
from dataclasses import asdict
from pathlib import Path

from hive_vlm.files import write_atomically, write_json_atomic
from hive_vlm.training.recipe import STAGE_CONFIGS


REFERENCE = "hive-paired"
PROBE_LEVELS = ("low", "mid", "high")  # linear-probe targets: colour, shape, count


def _numbers(scores: dict) -> dict:
    return {key: value for key, value in scores.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def headline(scores: dict) -> str:
    """The first number an adapter reports: its main score (hive-shapes `accuracy`, VQA accuracy, MME perception)."""
    return next(iter(_numbers(scores)))


def run_metrics(run: dict) -> dict:
    """One run's numbers, flattened to `"group/name": value`: every number of every evaluation (`label/key`), the
    linear probe, trainable parameters, seconds per step and peak memory."""
    metrics = {}
    for label, scores in run["final"].items():
        metrics.update({f"{label}/{key}": value for key, value in _numbers(scores).items()})
    metrics.update({f"probe/{level}": value for level, value in (run.get("linear_probe") or {}).items()})
    metrics["params/stage2"] = run["parameters"]["stage2"]["total"]["trainable"]
    metrics["params/stage3"] = run["parameters"]["stage3"]["total"]["trainable"]
    metrics["seconds_per_step/stage2"] = run["timing"]["stage2_seconds_per_step"]
    metrics["seconds_per_step/stage3"] = run["timing"]["stage3_seconds_per_step"]
    metrics["memory/peak_rss_mb"] = run["memory"]["peak_rss_mb"]
    metrics["memory/peak_rss_delta_mb"] = run["memory"]["peak_rss_delta_mb"]
    return metrics


def quality_metrics(meta: dict) -> list[str]:
    """The metrics the seed-noise verdicts cover: every evaluation's numbers, then the probe."""
    return [*(entry["label"] for entry in meta["evaluations"]), "probe"]


def aggregate(runs: list[dict]) -> dict:
    """`{fusion: {metric: {"mean", "std", "n"}}}` over seeds (`runs` carry `fusion` and `metrics`); std is the
    sample standard deviation (0 with one seed)."""
    values = {}
    for run in runs:
        for metric, value in run["metrics"].items():
            values.setdefault(run["fusion"], {}).setdefault(metric, []).append(value)
    return {fusion: {metric: {"mean": round(statistics.fmean(v), 4), "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
                              "n": len(v)} for metric, v in metrics.items()}
            for fusion, metrics in values.items()}  # fmt: skip


def noise_verdicts(table: dict, groups, reference: str = REFERENCE) -> list[dict]:
    """Each fusion against `reference` on every metric of `groups` (metric names `group/key`): the mean difference and
    whether it lies within the seed noise."""
    if reference not in table:
        return []
    verdicts = []
    for fusion, row in table.items():
        if fusion == reference:
            continue
        for metric in [m for group in groups for m in table[reference] if m.split("/")[0] == group]:
            if metric not in row:
                continue
            ours, theirs = table[reference][metric], row[metric]
            difference = round(theirs["mean"] - ours["mean"], 2)
            if min(ours["n"], theirs["n"]) < 2:
                verdict = "one seed: cannot tell"
            elif abs(difference) <= ours["std"] + theirs["std"]:
                verdict = "within seed noise"
            else:
                verdict = f"{fusion} {'better' if difference > 0 else 'worse'} beyond seed noise"
            verdicts.append({"fusion": fusion, "metric": metric, "difference": difference, "verdict": verdict})
    return verdicts


def _cell(entry: dict | None, digits: int = 1) -> str:
    if entry is None:
        return "–"
    if digits == 0:
        return f"{entry['mean']:,.0f}" + (f" ± {entry['std']:,.0f}" if entry["std"] else "")
    if entry["n"] < 2:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _table(table: dict, fusions: list, columns: list[tuple[str, str]], digits: int = 1, row_label: str = "fusion") -> list[str]:
    lines = [f"| {row_label} | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for fusion in fusions:
        row = table.get(fusion, {})
        lines.append(f"| {fusion} | " + " | ".join(_cell(row.get(metric), digits) for metric, _ in columns) + " |")
    return lines


def stage_summary(values: dict, stage: int) -> str:
    """A study stage's steps, batch and schedule in words, `TrainingArguments`' defaults where the recipe is silent."""
    defaults = {field.name: field.default for field in dataclasses.fields(STAGE_CONFIGS[stage])}
    schedule, warmup, accumulation, clipping = (values.get(key, defaults[key]) for key in
                                                ("lr_scheduler_type", "warmup_steps", "gradient_accumulation_steps", "max_grad_norm"))  # fmt: skip
    warmup = f"{warmup:.0%} warm-up" if 0 < warmup < 1 else f"{int(warmup)} warm-up steps"
    batch = values["per_device_train_batch_size"] * accumulation
    return (f"{values['max_steps']} steps × {batch} ({getattr(schedule, 'value', schedule)} learning rate {values['learning_rate']}, "
            f"{warmup}, {accumulation} batch{'es' if accumulation > 1 else ''} a step, gradients clipped at {clipping})")


def llm_setting(study) -> str:
    """How a study trains the LLM (its stages' `train_llm`, `train_llm_embeddings` and `lora_r`), in words."""
    if study.stage3.get("lora_r"):
        return f"LoRA r={study.stage3['lora_r']} on the LLM in stage 3"
    trained = [stage for stage in (2, 3) if getattr(study, f"stage{stage}").get("train_llm")]
    if not trained:
        return "LLM frozen throughout"
    edges = all(getattr(study, f"stage{stage}").get("train_llm_embeddings", True) for stage in trained)
    what = "the whole LLM" if edges else "the LLM but its embeddings and head"
    setting = " (`pretrain_llm`, the authors' setting)" if trained == [2, 3] and not edges else ""
    return f"{what} trained in stage{'s 2 and 3' if trained == [2, 3] else ' ' + str(trained[0])}{setting}"


def budget_setting(study, matched: dict | None) -> str:
    """Whether a study's stage-2 budgets were matched, in words."""
    if not matched:
        return "Budgets not matched (`match_params: false`): each fusion's stage-2 budget is its own (see Cost)."
    kept = [f"{name} ({row['budget']:,})" for name, row in matched.items() if not row["width"] and row["budget"] != row["reference"]]
    return ("Budgets matched to hive-paired's stage-2 budget (`match_params`, the default): " +
            ", ".join(f"{name} width {row['width']} → {row['budget']:,}" for name, row in matched.items() if row["width"]) +
            (f"; without a width to change, kept at their own: {', '.join(kept)}" if kept else "") + ".")  # fmt: skip


def markdown(study, meta: dict, table: dict, verdicts: list[dict], matched: dict | None, plots: dict, title: str = "Ablation",
             compared: str = "Fusions", readouts: dict | None = None) -> str:
    """The report's tables as markdown (what docs/ablation.md quotes): one per evaluation, with its per-level or
    per-group columns when the benchmark reports them; `readouts` (name -> the encoder layers it reads) first."""
    row_label = compared.lower().rstrip("s").split()[-1]  # "Fusions" -> fusion, "Pre-training variants" -> variant
    fusions = [fusion for fusion in study.fusions if fusion in table]
    stage2, stage3 = study.stage2, study.stage3
    llm = llm_setting(study)
    lines = [f"# {title}: {study.name}", ""]
    if study.default_study:
        lines += ["The recipe has no `study` section: the default fusions and seeds ran.", ""]
    lines += [f"{compared}: {', '.join(fusions)}. Seeds: {study.seeds} (mean ± sample std over seeds). Stage 2: {stage_summary(stage2, 2)}; "
              f"stage 3: {stage_summary(stage3, 3)} "
              f"(encoder {'trained' if stage3['train_vision'] else 'frozen'}); {llm}.", ""]  # fmt: skip
    if matched is not None or not study.match_params:
        lines += [budget_setting(study, matched), ""]
    if readouts:
        lines += [f"| {row_label} | encoder layers read (0-based) |", "|---|---|"]
        lines += [f"| {name} | {readouts[name]} |" for name in fusions if readouts.get(name)] + [""]
    for entry in meta["evaluations"]:
        label = entry["label"]
        keys = [m.split("/", 1)[1] for m in table.get(fusions[0], {}) if m.split("/")[0] == label] if fusions else []
        where = f"{entry['benchmark']}" + (f", split {entry['split']}" if entry["split"] else "")
        lines += ["", f"## {label} ({where})", ""] + _table(table, fusions, [(f"{label}/{key}", key) for key in keys], row_label=row_label)
    if any("probe/low" in table.get(fusion, {}) for fusion in fusions):
        before = meta.get("linear_probe_before", {})
        lines += ["", "## Linear probe of the encoder after training (top-1 %, low: colour, mid: shape, high: count)", ""]
        lines += _table(table, fusions, [(f"probe/{level}", level) for level in PROBE_LEVELS], row_label=row_label)
        if before:
            lines.append("| encoder before fusion training | " + " | ".join(f"{before[level]:.1f}" for level in PROBE_LEVELS) + " |")
    lines += ["", "## Cost", ""]
    lines += _table(table, fusions, [("params/stage2", "trainable params stage 2"), ("params/stage3", "trainable params stage 3")], digits=0,
                    row_label=row_label)
    lines += [""] + _table(table, fusions, [("seconds_per_step/stage2", "s/step stage 2 (median)"), ("seconds_per_step/stage3", "s/step stage 3 (median)"),
                                             ("memory/peak_rss_mb", "peak RSS (MiB)"),
                                             ("memory/peak_rss_delta_mb", "peak RSS over the run's baseline (MiB)")], digits=3,
                                            row_label=row_label)  # fmt: skip
    lines += ["", f"## Against {REFERENCE}: is the difference beyond the seed noise?", "",
              "Rule: within seed noise when |mean difference| ≤ std(fusion) + std(hive-paired).", "",
              f"| {row_label} | metric | difference (points) | verdict |", "|---|---|---|---|"]
    lines += [f"| {v['fusion']} | {v['metric']} | {v['difference']:+.1f} | {v['verdict']} |" for v in verdicts]
    lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def plot(out: Path, study, meta: dict, runs: list[dict], table: dict) -> dict:
    """PNG plots: the checkpoint evaluation's main score against stage-3 steps per fusion; per level (or group) of every
    evaluation that reports levels, and of the linear probe. Returns name -> path relative to `out`."""
    import matplotlib  # heavy, and only the plots use it: loaded on demand

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # on demand, after the backend is chosen

    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    fusions = [fusion for fusion in study.fusions if fusion in table]
    paths = {}

    figure, axis = plt.subplots(figsize=(6, 4))
    key = None
    for fusion in fusions:
        curves = [run["curve"] for run in runs if run["fusion"] == fusion]
        key = headline({k: v for k, v in curves[0][0].items() if k != "step"})
        steps = [point["step"] for point in curves[0]]
        values = [[curve[i][key] for curve in curves] for i in range(len(steps))]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        axis.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=fusion)
    axis.set_xlabel("stage-3 step")
    axis.set_ylabel(f"{meta['validation']['label']} {key}")
    axis.set_title("Score against training steps (mean ± std over seeds)")
    axis.legend()
    figure.tight_layout()
    paths["accuracy_vs_steps"] = _save(figure, folder / "accuracy_vs_steps.png", out)

    panels = []
    for entry in meta["evaluations"]:
        keys = [m.split("/", 1)[1] for m in table[fusions[0]] if m.split("/")[0] == entry["label"]]
        if len(keys) > 2:  # a main score and at least two levels or groups
            panels.append((entry["label"], keys[1:]))
    if "probe/low" in table[fusions[0]]:
        panels.append(("probe", list(PROBE_LEVELS)))
    if panels:
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        width = 0.8 / max(1, len(fusions))
        for axis, (group, keys) in zip(axes[0], panels):
            for k, fusion in enumerate(fusions):
                entries = [table[fusion].get(f"{group}/{level}") for level in keys]
                xs = [i + (k - (len(fusions) - 1) / 2) * width for i in range(len(keys))]
                axis.bar(xs, [e["mean"] if e else 0 for e in entries], width, yerr=[e["std"] if e else 0 for e in entries],
                         capsize=2, label=fusion)  # fmt: skip
            axis.set_xticks(range(len(keys)), keys)
            axis.set_title(group)
            axis.set_ylabel("score")
        axes[0][0].legend(fontsize="small")
        figure.tight_layout()
        paths["accuracy_per_level"] = _save(figure, folder / "accuracy_per_level.png", out)
    return paths


def _save(figure, path: Path, out: Path) -> str:
    import matplotlib.pyplot as plt  # heavy, and only the plots use it: loaded on demand

    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return str(path.relative_to(out))


def write_report(out, study, meta: dict, runs: list[dict], matched: dict | None = None, stem: str = "ablation",
                 title: str = "Ablation", compared: str = "Fusions", show_readouts: bool = True) -> dict:
    """Writes `<stem>.json`, `<stem>.md` and `plots/` into `out`; returns the JSON content.

    Args:
        out (`str` or `os.PathLike`): the study's folder.
        study (`HiveStudySettings`): what ran.
        meta (`dict`): the shared preparation's meta (`prepare_shared`).
        runs (`list[dict]`): every run's result (`run_fusion`).
        matched (`dict`, *optional*): `match_budgets`'s widths and budgets.
        show_readouts (`bool`): list the encoder layers each run's model reads (its `readout`) in the markdown.
    """
    out = Path(out)
    flat = [{"fusion": run["fusion"], "seed": run["seed"], "metrics": run_metrics(run)} for run in runs]
    table = aggregate(flat)
    verdicts = noise_verdicts(table, quality_metrics(meta))
    plots = plot(out, study, meta, runs, table)
    report = {
        "study": asdict(study),
        "meta": meta,
        "noise_rule": "within seed noise when |mean difference| <= std(fusion) + std(hive-paired); sample std over seeds",
        "aggregate": table,
        "verdicts": verdicts,
        "matched_budgets": matched,
        "runs": [{**entry, "curve": run["curve"], "parameters": run["parameters"], "batch_hashes":
                  {stage: run["stages"][stage]["batch_hashes"] for stage in run["stages"]},
                  "losses": {stage: run["stages"][stage]["losses"] for stage in run["stages"]}, "memory": run["memory"],
                  "timing": run["timing"], "readout": run.get("readout"),
                  **{key: run[key] for key in ("encoder", "encoder_digest") if key in run}} for entry, run in zip(flat, runs)],
        "plots": plots,
    }  # fmt: skip
    write_json_atomic(out / f"{stem}.json", report)
    readouts = {run["fusion"]: run.get("readout") for run in runs} if show_readouts else None
    write_atomically(out / f"{stem}.md", markdown(study, meta, table, verdicts, matched, plots, title, compared, readouts))
    return report
