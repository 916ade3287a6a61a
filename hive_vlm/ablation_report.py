"""`hive ablate`'s report: mean ± std over seeds, the seed-noise verdicts, a markdown file, a JSON file and PNG plots.

Seed-noise rule: a fusion's difference from hive-paired on a metric is *within the seed noise* when
|mean difference| <= std(fusion) + std(hive-paired) (sample standard deviations over seeds). With one seed nothing
can be told apart, and the report says so.

Example:
    >>> aggregate([{"fusion": "flat", "metrics": {"test/all": 40.0}}, {"fusion": "flat", "metrics": {"test/all": 44.0}}])
    {'flat': {'test/all': {'mean': 42.0, 'std': 2.8284, 'n': 2}}}
"""

import statistics
from pathlib import Path


LEVELS = ("low", "mid", "high")
REFERENCE = "hive-paired"
ACCURACY_METRICS = [f"{split}/{level}" for split in ("test", "test_compositional") for level in (*LEVELS, "all")]
VIEW_METRICS = ("mme/perception", "scienceqa/accuracy", "okvqa/vqa_accuracy")
PROBE_METRICS = tuple(f"probe/{level}" for level in LEVELS)
NOISE_METRICS = ("test/all", "test_compositional/all", *(f"test/{level}" for level in LEVELS), *VIEW_METRICS, *PROBE_METRICS)


def run_metrics(run: dict) -> dict:
    """One run's numbers, flattened to `"group/name": value`."""
    final = run["final"]
    metrics = {}
    for split in ("test", "test_compositional"):
        scores = final[f"hive-shapes-{split}"]
        metrics.update({f"{split}/{level}": scores[level] for level in LEVELS if level in scores})
        metrics[f"{split}/all"] = scores["accuracy"]
    metrics["mme/perception"] = final["mme"]["perception"]
    metrics["scienceqa/accuracy"] = final["scienceqa"]["accuracy"]
    metrics["okvqa/vqa_accuracy"] = final["okvqa"]["vqa_accuracy"]
    metrics.update({f"probe/{level}": value for level, value in run["linear_probe"].items()})
    metrics["params/stage2"] = run["parameters"]["stage2"]["trainable"]
    metrics["params/stage3"] = run["parameters"]["stage3"]["trainable"]
    metrics["seconds_per_step/stage2"] = run["timing"]["stage2_seconds_per_step"]
    metrics["seconds_per_step/stage3"] = run["timing"]["stage3_seconds_per_step"]
    metrics["memory/peak_rss_mb"] = run["memory"]["peak_rss_mb"]
    metrics["memory/peak_rss_delta_mb"] = run["memory"]["peak_rss_delta_mb"]
    return metrics


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


def noise_verdicts(table: dict, reference: str = REFERENCE, metrics=NOISE_METRICS) -> list[dict]:
    """Each fusion against `reference` on `metrics`: the mean difference and whether it lies within the seed noise."""
    if reference not in table:
        return []
    verdicts = []
    for fusion, row in table.items():
        if fusion == reference:
            continue
        for metric in metrics:
            if metric not in row or metric not in table[reference]:
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


def _table(table: dict, fusions: list, columns: list[tuple[str, str]], digits: int = 1) -> list[str]:
    lines = ["| fusion | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for fusion in fusions:
        row = table.get(fusion, {})
        lines.append(f"| {fusion} | " + " | ".join(_cell(row.get(metric), digits) for metric, _ in columns) + " |")
    return lines


def markdown(settings, meta: dict, table: dict, verdicts: list[dict], matched: dict | None, plots: dict) -> str:
    """The report's tables as markdown (what docs/ablation.md quotes)."""
    fusions = [fusion for fusion in settings.fusions if fusion in table]
    seeds = settings.seeds
    lines = [f"# Ablation: {settings.name}", "",
             f"Fusions: {', '.join(fusions)}. Seeds: {seeds} (mean ± sample std over seeds). Stage 2: {settings.stage2['steps']} steps "
             f"× {settings.stage2['batch_size']}; stage 3: {settings.stage3['steps']} steps × {settings.stage3['batch_size']} "
             f"(encoder {'trained' if settings.stage3['train_vision'] else 'frozen'}); LLM "
             f"{'trained in stage 3' if settings.stage3['train_llm'] else 'frozen throughout'}. "
             f"hive-shapes: {settings.data['num_train']} train scenes, {settings.data['num_test']} test and "
             f"{settings.data['num_test_compositional']} compositional test scenes of {settings.data['image_size']} px.", ""]  # fmt: skip
    if matched:
        lines += ["Budgets matched to hive-paired's stage-2 budget (`--match-params`): " +
                  ", ".join(f"{name} width {row['width']} → {row['budget']:,}" for name, row in matched.items() if row["width"]), ""]  # fmt: skip
    lines += ["## hive-shapes accuracy (%)", ""]
    lines += _table(table, fusions, [(m, m.replace("test_compositional", "comp").replace("/", " ")) for m in ACCURACY_METRICS])
    lines += ["", "## Benchmark views of hive-shapes test", ""]
    lines += _table(table, fusions, [("mme/perception", "MME perception (max 2000)"), ("scienceqa/accuracy", "ScienceQA acc. (%)"),
                                      ("okvqa/vqa_accuracy", "VQA acc. (%)")])  # fmt: skip
    before = meta.get("linear_probe_before", {})
    lines += ["", "## Linear probe of the encoder after training (top-1 %, low: colour, mid: shape, high: count)", ""]
    lines += _table(table, fusions, [(m, m.split("/")[1]) for m in PROBE_METRICS])
    if before:
        lines.append("| encoder before fusion training | " + " | ".join(f"{before[level]:.1f}" for level in LEVELS) + " |")
    lines += ["", "## Cost", ""]
    lines += _table(table, fusions, [("params/stage2", "trainable params stage 2"), ("params/stage3", "trainable params stage 3")], digits=0)
    lines += [""] + _table(table, fusions, [("seconds_per_step/stage2", "s/step stage 2 (median)"), ("seconds_per_step/stage3", "s/step stage 3 (median)"),
                                             ("memory/peak_rss_mb", "peak RSS (MiB)"),
                                             ("memory/peak_rss_delta_mb", "peak RSS over the run's baseline (MiB)")], digits=3)  # fmt: skip
    lines += ["", f"## Against {REFERENCE}: is the difference beyond the seed noise?", "",
              "Rule: within seed noise when |mean difference| ≤ std(fusion) + std(hive-paired).", "",
              "| fusion | metric | difference (points) | verdict |", "|---|---|---|---|"]
    lines += [f"| {v['fusion']} | {v['metric']} | {v['difference']:+.1f} | {v['verdict']} |" for v in verdicts]
    lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def plot(out: Path, settings, runs: list[dict], table: dict) -> dict:
    """PNG plots: validation accuracy against stage-3 steps per fusion; test and compositional accuracy per level;
    linear-probe accuracy per level. Returns name -> path relative to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    fusions = [fusion for fusion in settings.fusions if fusion in table]
    paths = {}

    figure, axis = plt.subplots(figsize=(6, 4))
    for fusion in fusions:
        curves = [run["curve"] for run in runs if run["fusion"] == fusion]
        steps = [point["step"] for point in curves[0]]
        values = [[curve[i]["accuracy"] for curve in curves] for i in range(len(steps))]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        axis.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=fusion)
    axis.set_xlabel("stage-3 step")
    axis.set_ylabel("hive-shapes validation accuracy (%)")
    axis.set_title("Accuracy against training steps (mean ± std over seeds)")
    axis.legend()
    figure.tight_layout()
    paths["accuracy_vs_steps"] = _save(figure, folder / "accuracy_vs_steps.png", out)

    panels = [("test", "test"), ("test_compositional", "test_compositional"), ("probe", "linear probe")]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.8 / max(1, len(fusions))
    for axis, (group, title) in zip(axes, panels):
        for k, fusion in enumerate(fusions):
            entries = [table[fusion].get(f"{group}/{level}") for level in LEVELS]
            xs = [i + (k - (len(fusions) - 1) / 2) * width for i in range(len(LEVELS))]
            axis.bar(xs, [e["mean"] if e else 0 for e in entries], width, yerr=[e["std"] if e else 0 for e in entries],
                     capsize=2, label=fusion)  # fmt: skip
        axis.set_xticks(range(len(LEVELS)), LEVELS)
        axis.set_title(title)
        axis.set_ylabel("accuracy (%)")
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    paths["accuracy_per_level"] = _save(figure, folder / "accuracy_per_level.png", out)
    return paths


def _save(figure, path: Path, out: Path) -> str:
    import os

    import matplotlib.pyplot as plt

    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return str(path.relative_to(out))


def write_report(out, settings, meta: dict, runs: list[dict], matched: dict | None = None) -> dict:
    """Writes `ablation.json`, `ablation.md` and `plots/` into `out`; returns the JSON content.

    Args:
        out (`str` or `os.PathLike`): the study's folder.
        settings (`HiveAblationSettings`): what ran.
        meta (`dict`): the shared preparation's meta (`prepare_shared`).
        runs (`list[dict]`): every run's result (`run_fusion`).
        matched (`dict`, *optional*): `match_budgets`'s widths and budgets.
    """
    from dataclasses import asdict

    from hive_vlm.files import write_json_atomic
    from hive_vlm.files import write_atomically

    out = Path(out)
    flat = [{"fusion": run["fusion"], "seed": run["seed"], "metrics": run_metrics(run)} for run in runs]
    table = aggregate(flat)
    verdicts = noise_verdicts(table)
    plots = plot(out, settings, runs, table)
    report = {
        "settings": asdict(settings),
        "meta": meta,
        "noise_rule": "within seed noise when |mean difference| <= std(fusion) + std(hive-paired); sample std over seeds",
        "aggregate": table,
        "verdicts": verdicts,
        "matched_budgets": matched,
        "runs": [{**entry, "curve": run["curve"], "parameters": run["parameters"], "batch_hashes":
                  {stage: run["stages"][stage]["batch_hashes"] for stage in run["stages"]},
                  "losses": {stage: run["stages"][stage]["losses"] for stage in run["stages"]}, "memory": run["memory"],
                  "timing": run["timing"]} for entry, run in zip(flat, runs)],
        "plots": plots,
    }  # fmt: skip
    write_json_atomic(out / "ablation.json", report)
    write_atomically(out / "ablation.md", markdown(settings, meta, table, verdicts, matched, plots))
    return report
