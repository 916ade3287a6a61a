"""One pre-trained encoder carried into transformers' own `LlavaForConditionalGeneration` with one seed: the unit of
`hive transfer`.

    projector pretraining  the projector alone trains on the recipe's stage-2 captions (encoder and LLM frozen)
    fine-tuning            the projector, and the LLM (`train_llm`) and the encoder (`train_vision`) when asked, train
                           on the recipe's stage-3 chats

Every encoder gets the same LLM, LLaVA initialisation, batches, steps and evaluations, through the training loop and
the scorers of `hive ablate`.

Example:
    >>> result = transfer_encoder({"variant": "hive-paired", "seed": 0, "encoder": "study/pretraining/runs/...",
    ...                            "llm": "study/transfer-llm/stage0/model", "shared": "study/pretraining/shared",
    ...                            "out": "study/transfer/hive-paired-seed0", "transfer": transfer_dict,
    ...                            "eval": eval_dict})  # doctest: +SKIP
"""

import json
import time
from pathlib import Path


def transfer_encoder(spec: dict) -> dict:
    """Transfers one encoder with one seed; writes `spec["out"]/result.json` and returns it.

    Args:
        spec (`dict`): `variant`, `seed`, `encoder` (folder), `llm` (folder or Hub id), `shared` (the pre-training's
            shared folder: processor, data, evaluations), `out`, `transfer` (`HiveTransferSettings` as a dict) and
            `eval` (the study's evaluation settings).
    """
    import datasets

    from hive_vlm.ablation.fusions import HiveFusionSettings, build_fusion
    from hive_vlm.ablation.probe import probe_encoder
    from hive_vlm.ablation.run import evaluate_fusion, peak_rss_mb, quiet, reset_peak_rss, train_stage
    from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator
    from hive_vlm.files import write_json_atomic
    from modeling_hive import HiveProcessor

    quiet()
    transfer, seed, eval_settings = spec["transfer"], spec["seed"], spec["eval"]
    shared, out = Path(spec["shared"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((shared / "meta.json").read_text())
    processor = HiveProcessor.from_pretrained(shared / "processor")
    captions = datasets.load_from_disk(str(shared / "data" / "stage2"))
    chats = datasets.load_from_disk(str(shared / "data" / "stage3"))
    memory_method, baseline_rss = reset_peak_rss()
    started = time.perf_counter()

    llava = build_fusion("flat", spec["encoder"], spec["llm"], meta["image_token_id"],
                         HiveFusionSettings(flat_vision_feature_layer=transfer["vision_feature_layer"]), seed=seed,
                         vocab_size=meta["vocab_size"])  # fmt: skip
    result = {"variant": spec["variant"], "fusion": spec["variant"], "seed": seed, "encoder": spec["encoder"], "llm": spec["llm"],
              "transfer": transfer, "parameters": {}, "stages": {}}  # fmt: skip
    if meta["shapes"]:  # the encoder as pre-training left it (transfer keeps it frozen unless train_vision)
        result["linear_probe_before"] = probe_encoder(llava.encoder, processor.image_processor, shared / "data" / "shapes",
                                                      eval_settings["probe_epochs"], eval_settings.get("probe_limit"))  # fmt: skip
    result["parameters"]["stage2"] = llava.set_stage(2, train_vision=False)
    collator = HiveCaptionCollator(processor, prompt=meta["caption_prompt"], max_length=meta["max_length"]["stage2"])
    stage2 = train_stage(llava, captions, collator, transfer["stage2"], seed * 1000 + 12)
    result["parameters"]["stage3"] = llava.set_stage(3, train_vision=transfer["train_vision"], train_llm=transfer["train_llm"])
    checkpoints = sorted({round(transfer["stage3"]["steps"] * k / eval_settings["checkpoints"]) for k in range(eval_settings["checkpoints"] + 1)})
    curve = []

    def checkpoint(step: int) -> None:
        if step in checkpoints:
            validation = meta["validation"]
            scores = evaluate_fusion(llava, processor, [validation], out / "checkpoints" / f"step-{step}", eval_settings,
                                     eval_settings["validation_limit"])  # fmt: skip
            curve.append({"step": step, **scores[validation["label"]]})

    checkpoint(0)
    stage3 = train_stage(llava, chats, HiveChatCollator(processor, max_length=meta["max_length"]["stage3"]), transfer["stage3"],
                         seed * 1000 + 13, checkpoint)  # fmt: skip
    train_seconds = time.perf_counter() - started
    result["stages"] = {"stage2": stage2, "stage3": stage3}
    result["curve"] = curve
    result["final"] = evaluate_fusion(llava, processor, meta["evaluations"], out / "final", eval_settings, eval_settings.get("limit"))
    if meta["shapes"]:
        result["linear_probe"] = probe_encoder(llava.encoder, processor.image_processor, shared / "data" / "shapes",
                                               eval_settings["probe_epochs"], eval_settings.get("probe_limit"))  # fmt: skip
    peak = peak_rss_mb(memory_method)
    result["timing"] = {"stage2_seconds_per_step": round(stage2["seconds_per_step"], 4),
                        "stage3_seconds_per_step": round(stage3["seconds_per_step"], 4),
                        "wall_seconds": round(time.perf_counter() - started, 1), "train_wall_seconds": round(train_seconds, 1)}  # fmt: skip
    result["memory"] = {"peak_rss_mb": round(peak, 1), "peak_rss_delta_mb": round(peak - baseline_rss, 1),
                        "baseline_rss_mb": round(baseline_rss, 1), "method": memory_method, "isolated": bool(spec.get("isolated"))}  # fmt: skip
    write_json_atomic(out / "result.json", result)
    return result
