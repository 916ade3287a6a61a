"""The demo's summary table (the README's Demo section shows the full run's)."""

from hive_vlm.data.shapes import LEVELS, QUESTION_TYPES

from .settings import EVAL_SPLITS


def summary_table(summary: dict) -> str:
    """The demo's results as a plain-text table (the README's Demo section shows the full run's)."""
    results = summary["results"]
    lines = ["", "=" * 78, f"HIVE demo summary: {summary['seconds']:.0f} s ({summary['seconds'] / 60:.1f} min) on {summary['cpu_count']} CPU cores, "
             f"seed {summary['seed']}, layer pairs {summary['layer_pairs']}", "=" * 78]  # fmt: skip
    lines.append(f"{'hive-shapes accuracy (%)':<40}{'low':>8}{'mid':>8}{'high':>8}{'all':>8}")
    for split in EVAL_SPLITS:
        entry = results[f"hive-shapes-{split}"]
        rows = [("HIVE", entry["scores"]), ("HIVE, blank image", entry.get("blank_image")), ("majority baseline", entry["baseline"])]
        for label, scores in rows:
            if scores is not None:
                row = "".join(f"{scores.get(key, float('nan')):>8.1f}" for key in (*LEVELS, "accuracy"))
                lines.append(f"  {split if label == 'HIVE' else '':<20}{label:<18}{row}")
    columns = [("test", "HIVE"), ("test", "HIVE, blank image"), ("test", "majority baseline"),
               ("test_compositional", "HIVE"), ("test_compositional", "majority baseline")]  # fmt: skip
    lines.append(f"\n{'accuracy by question type (%)':<36}{'test':>8}{'blank':>8}{'majority':>10}{'compos.':>10}{'majority':>10}")
    rows = [(f"{qtype} ({level})", qtype) for level in LEVELS for qtype in QUESTION_TYPES[level]]
    rows += [("attributes, only object", "attributes, only object"), ("attributes, one of several", "attributes, one of several")]
    widths = (8, 8, 10, 10, 10)
    for label, key in rows:
        cells = [results[f"hive-shapes-{split}"].get("by_type", {}).get(column, {}).get(key) for split, column in columns]
        lines.append(f"  {label:<34}" + "".join(f"{cell:>{width}.1f}" if cell is not None else f"{'-':>{width}}"
                                                 for cell, width in zip(cells, widths)))  # fmt: skip
    lines.append("  (test: HIVE, HIVE on a blank image, majority baseline; compos.: test_compositional, HIVE and majority.\n"
                 "   attributes: colour, texture, shape and size questions, about a scene's only object or one of 2-4.)")
    lines.append(f"\n{'benchmark views of hive-shapes test':<52}{'HIVE':>12}{'majority':>12}")
    views = (("mme", "perception", "MME layout: perception score (max 800)"),
             ("scienceqa", "accuracy", "ScienceQA layout: accuracy (%)"),
             ("okvqa", "vqa_accuracy", "OK-VQA layout: VQA accuracy (%)"))  # fmt: skip
    for name, key, label in views:
        entry = results[name]
        lines.append(f"  {label + ' [' + entry['protocol'] + ']':<50}{entry['scores'][key]:>12.1f}{entry['baseline'][key]:>12.1f}")
    lines.append("\nfresh image (pipeline('visual-question-answering') on the saved folder):")
    for item in summary["fresh_scene"]["answers"]:
        lines.append(f"  [{item['level']}] {item['question']}  answer: {item['answer']!r}, truth: {item['truth']!r}")
    lines.append("\nphase times (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in summary["phase_seconds"].items()))
    lines.append(f"model: {summary['model']}\nfigure: {summary['figure']}")
    return "\n".join(lines)
