"""`hive bench`'s printed tables: HIVE against LLaVA with the issue's targets, the shared-softmax column, and (when
measured) the compiled decode, the batch sweep and the roofline.

Example:
    >>> from hive_vlm.bench.benchmark import run_benchmark
    >>> from hive_vlm.bench.tables import format_table
    >>> print(format_table(run_benchmark("toy", device="cpu", repeats=1)))
"""

from .benchmark import RESULT_KEYS, SHARED_SOFTMAX_TARGETS, TARGETS, target_met


def fixed_width(lines: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return rendered


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _mib(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes:,.0f} B"


def format_table(result: dict) -> str:
    """The nine measures as a fixed-width table: HIVE, LLaVA (or the reference), ratio, target, verdict."""
    medians, kv, memory, flops = result["medians_s"], result["kv_cache_bytes"], result["train_memory_bytes"], result["flops"]
    tokens = result["decode_tokens_per_s"]
    long_tokens = result["sizes"]["long_context_image_tokens"]
    rows = {
        "ttft_ratio": (_milliseconds(medians["ttft"]["hive"]), _milliseconds(medians["ttft"]["llava"])),
        "llm_prefill_ratio": (_milliseconds(medians["llm_prefill"]["hive"]), _milliseconds(medians["llm_prefill"]["llava"])),
        "decode_ratio_576": (f"{tokens['576']['hive']:,.1f} tok/s", f"{tokens['576']['llava']:,.1f} tok/s"),
        "decode_ratio_2880": (f"{tokens['2880']['hive']:,.1f} tok/s", f"{tokens['2880']['llava']:,.1f} tok/s"),
        "train_step_ratio": (_milliseconds(medians["train_step"]["hive"]), _milliseconds(medians["train_step"]["llava"])),
        "train_memory_ratio": (_mib(memory["peak_bytes"]["hive"]), _mib(memory["peak_bytes"]["llava"])),
        "kv_cache_ratio": (_mib(kv["hive"]["total"]), _mib(kv["llava"]["total"])),
        "cross_kv_cache_speedup": (
            f"cached {_milliseconds(medians['decode_step_cross_kv']['cached'])}/step",
            f"recompute {_milliseconds(medians['decode_step_cross_kv']['recompute'])}/step",
        ),
        "prefill_flops_fraction_of_peak": (
            f"{flops['hive_prefill_flops_per_s'] / 1e9:,.1f} GFLOP/s",
            f"peak {flops['matmul_peak_flops_per_s']['prefill'] / 1e9:,.1f} GFLOP/s",
        ),
    }
    labels = {key: text for key, (_, _, text) in TARGETS.items()}
    labels["decode_ratio_2880"] = labels["decode_ratio_2880"].replace("2,880", f"{long_tokens:,}")
    labels["decode_ratio_576"] = labels["decode_ratio_576"].replace("576", f"{result['sizes']['image_tokens']:,}")
    header = ("measure", "HIVE", "LLaVA / reference", "value", "target", "")
    lines = [header]
    for key in RESULT_KEYS:
        comparison, bound, _ = TARGETS[key]
        value = result[key]
        lines.append((labels[key], *rows[key], f"{value:.3f}", f"{comparison} {bound:g}", "met" if target_met(key, value) else "MISSED"))
    rendered = fixed_width(lines)
    settings, sizes, machine = result["settings"], result["sizes"], result["machine"]
    rendered.append("")
    rendered.append(
        f"size {sizes['size']} | {settings['device']} {settings['dtype']} | {machine['device_name']} | "
        f"{machine['torch_threads']} threads | repeats {settings['repeats']} | {settings['elapsed_s']:.0f} s"
    )
    rendered.append(
        f"shared encoder {_milliseconds(medians['encoder']['hive'])} (HIVE) / {_milliseconds(medians['encoder']['llava'])} (LLaVA); "
        f"fusion {_milliseconds(medians['fusion']['hive'])} (HIVE projectors + K/V) / {_milliseconds(medians['fusion']['llava'])} (LLaVA projector)"
    )
    if "576_batched" in tokens:
        rendered.append(
            f"decode at batch {sizes['decode_batch_size']}: HIVE/LLaVA tokens/s {tokens['576_batched']['hive'] / tokens['576_batched']['llava']:.3f} "
            f"({sizes['image_tokens']:,} image tokens), {tokens['2880_batched']['hive'] / tokens['2880_batched']['llava']:.3f} ({long_tokens:,})"
        )
    rendered.append(
        f"decode step with the encoder rerun too: {_milliseconds(medians['decode_step_cross_kv']['recompute_with_encoder'])} "
        f"({medians['decode_step_cross_kv']['recompute_with_encoder'] / medians['decode_step_cross_kv']['cached']:.1f}x the cached step); "
        f"HIVE stage-2 step at {flops['hive_train_step_fraction_of_peak']:.1%} of the matmul peak"
    )
    rendered.append(roofline_line(result))
    rendered += ["", shared_softmax_table(result)]
    if "compiled" in result:
        rendered += ["", compiled_table(result)]
    if "sweep" in result:
        rendered += ["", sweep_table(result)]
    return "\n".join(rendered)


def _percent(fraction: float) -> str:
    return f"{fraction:.1%}" if fraction >= 0.001 else f"{fraction:.2e}"


def roofline_line(result: dict) -> str:
    """Bytes per decode step and the fraction of the copy-bandwidth limit the eager batch-1 steps reach."""
    roofline = result["roofline"]
    fractions = roofline["decode_fraction_of_bandwidth"]["eager"]
    return (
        f"decode at batch 1 against the bandwidth limit (copy {roofline['copy_bytes_per_s'] / 1e9:,.1f} GB/s, read + written): "
        f"{_mib(roofline['decode_step_bytes']['576']['hive'])}/step HIVE, {_mib(roofline['decode_step_bytes']['576']['llava'])} LLaVA; "
        f"reached {_percent(fractions['576']['hive'])} HIVE, {_percent(fractions['576']['llava'])} LLaVA "
        f"({_percent(fractions['2880']['hive'])}, {_percent(fractions['2880']['llava'])} "
        f"at {result['sizes']['long_context_image_tokens']:,} image tokens)"
    )


def _decode_row(label: str, tokens_per_s: dict, ratio: float, fractions: dict) -> tuple[str, ...]:
    """One decode row: label, HIVE's and LLaVA's tokens/s, HIVE/LLaVA, and the fractions of the bandwidth limit."""
    return (label, f"{tokens_per_s['hive']:,.1f} tok/s", f"{tokens_per_s['llava']:,.1f} tok/s", f"{ratio:.3f}",
            f"{_percent(fractions['hive'])}, {_percent(fractions['llava'])}")  # fmt: skip


def compiled_table(result: dict) -> str:
    """The compiled decode steps: tokens/s of each model, HIVE/LLaVA, each model's speed-up over its eager step, the
    fraction of the bandwidth limit reached."""
    compiled, sizes = result["compiled"], result["sizes"]
    tokens, speedup, fractions = compiled["decode_tokens_per_s"], compiled["speedup_over_eager"], compiled["decode_fraction_of_bandwidth"]
    settings = compiled["settings"]
    header = ("compiled decode, static cache, batch 1", "HIVE", "LLaVA", "HIVE/LLaVA", "vs eager (HIVE, LLaVA)", "of bandwidth limit")
    lines = [header]
    for key, image_tokens in (("576", sizes["image_tokens"]), ("2880", sizes["long_context_image_tokens"])):
        row = _decode_row(f"decode tokens/s, {image_tokens:,} image tokens", tokens[key], compiled["ratios"][f"decode_ratio_{key}"], fractions[key])
        lines.append((*row[:4], f"{speedup[key]['hive']:.2f}x, {speedup[key]['llava']:.2f}x", row[4]))
    rendered = fixed_width(lines)
    compile_s = compiled["compile_s"]["576"]
    rendered.append(
        f"torch.compile mode {settings['mode']!r}, backend {settings['backend']!r}, dynamic {settings['dynamic']}; first run (compile) "
        f"{compile_s['hive']:.1f} s HIVE, {compile_s['llava']:.1f} s LLaVA, not timed; shared-softmax/gated tokens/s "
        f"{compiled['ratios']['shared_softmax_decode_ratio_576']:.3f}, {compiled['ratios']['shared_softmax_decode_ratio_2880']:.3f}; "
        f"graph breaks in a decode step: HIVE {compiled['dynamo']['576']['hive']['graph_breaks']}, "
        f"shared-softmax {compiled['dynamo']['576']['shared_softmax']['graph_breaks']}, LLaVA {compiled['dynamo']['576']['llava']['graph_breaks']}"
    )
    return "\n".join(rendered)


def sweep_table(result: dict) -> str:
    """Decode tokens/s over the batch sweep (one image), and stage-2 samples/s at each model's largest fitting batch."""
    sweep = result["sweep"]
    mode = "compiled" if "compiled" in result else "eager"
    header = (f"decode batch sweep ({mode}, static cache)", "HIVE", "LLaVA", "HIVE/LLaVA", "of bandwidth limit (HIVE, LLaVA)")
    lines = [header]
    for key, row in sweep["decode"].items():
        batches = row["batch_sizes"]
        label = f"batch {key}" if key != "largest" else f"largest fitting batch (HIVE {batches['hive']}, LLaVA {batches['llava']})"
        lines.append(_decode_row(label, row["tokens_per_s"], row["hive_llava_ratio"], row["fraction_of_bandwidth"]))
    rendered = fixed_width(lines)
    train = sweep["train"]
    per_model = [f"{name} batch {train['batch_sizes'][key]}, {train['samples_per_s'][key]:,.1f} samples/s"
                 for key, name in (("hive", "HIVE"), ("llava", "LLaVA"))]  # fmt: skip
    summary = "; ".join([*per_model, f"HIVE/LLaVA {train['hive_llava_ratio']:.3f}",
                         f"HIVE at {_percent(train['hive_fraction_of_matmul_peak'])} of the matmul peak"])  # fmt: skip
    budget = f"stage-2 at the largest batch in {_mib(sweep['memory_budget_bytes'])} (at most {sweep['batch_limit']})"
    return "\n".join([*rendered, f"{budget}: {summary}"])


def shared_softmax_table(result: dict) -> str:
    """HIVE's shared-softmax mode against its gated blocks at the same connections: gated, shared-softmax, ratio,
    target (no more than the gated blocks), verdict."""
    medians, kv, memory, tokens = result["medians_s"], result["kv_cache_bytes"], result["train_memory_bytes"]["peak_bytes"], result["decode_tokens_per_s"]
    trainable = result["parameters"]["trainable_stage2"]
    sizes = result["sizes"]
    cells = {
        "ttft_ratio": {name: _milliseconds(medians["ttft"][name]) for name in ("hive", "shared_softmax")},
        "llm_prefill_ratio": {name: _milliseconds(medians["llm_prefill"][name]) for name in ("hive", "shared_softmax")},
        "fusion_ratio": {name: _milliseconds(medians["fusion"][name]) for name in ("hive", "shared_softmax")},
        "decode_ratio_576": {name: f"{tokens['576'][name]:,.1f} tok/s" for name in ("hive", "shared_softmax")},
        "decode_ratio_2880": {name: f"{tokens['2880'][name]:,.1f} tok/s" for name in ("hive", "shared_softmax")},
        "train_step_ratio": {name: _milliseconds(medians["train_step"][name]) for name in ("hive", "shared_softmax")},
        "train_memory_ratio": {name: _mib(memory[name]) for name in ("hive", "shared_softmax")},
        "kv_cache_ratio": {name: _mib(kv[name]["total"]) for name in ("hive", "shared_softmax")},
        "trainable_ratio": {name: f"{trainable[name]:,}" for name in ("hive", "shared_softmax")},
    }
    header = ("shared-softmax vs gated blocks", "gated", "shared-softmax", "ratio", "target", "")
    lines = [header]
    for key, (comparison, bound, text) in SHARED_SOFTMAX_TARGETS.items():
        text = text.replace("2,880", f"{sizes['long_context_image_tokens']:,}").replace("576", f"{sizes['image_tokens']:,}")
        value = result["shared_softmax"][key]
        verdict = "met" if target_met(key, value, SHARED_SOFTMAX_TARGETS) else "MISSED"
        lines.append((text, cells[key]["hive"], cells[key]["shared_softmax"], f"{value:.3f}", f"{comparison} {bound:g}", verdict))
    rendered = fixed_width(lines)
    rendered.append(f"same connections {sizes['cross_attention_layers']}, same encoder, LLM, head and projectors")
    return "\n".join(rendered)
