"""One pre-trained encoder carried into transformers' own `LlavaForConditionalGeneration` with one seed: the unit of
`hive transfer`.

    projector pretraining  the projector alone trains on the recipe's stage-2 captions (encoder and LLM frozen)
    fine-tuning            the projector, and the LLM (`train_llm`) and the encoder (`train_vision`) when asked, train
                           on the recipe's stage-3 chats

Every encoder gets the same LLM, LLaVA initialisation, batches, steps and evaluations, through the stage trainers and
the scorers of `hive ablate` (`hive train`'s own trainers).

Example:
    >>> result = transfer_encoder({"variant": "hive-paired", "seed": 0, "encoder": "study/pretraining/runs/...",
    ...                            "llm": "study/transfer-llm/stage0/model", "shared": "study/pretraining/shared",
    ...                            "out": "study/transfer/hive-paired-seed0", "transfer": transfer_dict,
    ...                            "eval": eval_dict})  # doctest: +SKIP
"""

from pathlib import Path

from hive_vlm.ablation.fusions import HiveFusionSettings, build_fusion
from hive_vlm.ablation.probe import probe_encoder
from hive_vlm.ablation.run import quiet, shared_inputs, start_clock, train_and_evaluate
from hive_vlm.files import write_json_atomic


def transfer_encoder(spec: dict) -> dict:
    """Transfers one encoder with one seed; writes `spec["out"]/result.json` and returns it.

    Args:
        spec (`dict`): `variant`, `seed`, `encoder` (folder), `llm` (folder or Hub id), `shared` (the pre-training's
            shared folder: processor, data, evaluations), `out`, `transfer` (`HiveTransferSettings` as a dict) and
            `eval` (the study's evaluation settings).
    """
    quiet()
    transfer, seed, eval_settings = spec["transfer"], spec["seed"], spec["eval"]
    shared, out = Path(spec["shared"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    meta, processor, _, _ = shared_inputs(shared)
    clock = start_clock()
    llava = build_fusion("flat", spec["encoder"], spec["llm"], meta["image_token_id"],
                         HiveFusionSettings(flat_vision_feature_layer=transfer["vision_feature_layer"]), seed=seed,
                         vocab_size=meta["vocab_size"])  # fmt: skip
    result = {"variant": spec["variant"], "fusion": spec["variant"], "seed": seed, "encoder": spec["encoder"],
              "encoder_digest": spec["encoder_digest"], "llm": spec["llm"], "transfer": transfer, "eval": eval_settings,
              "readout": llava.readout}
    if meta["shapes"]:  # the encoder as pre-training left it (transfer keeps it frozen unless train_vision)
        result["linear_probe_before"] = probe_encoder(llava.encoder, processor.image_processor, shared / "data" / "shapes",
                                                      eval_settings["probe_epochs"], eval_settings.get("probe_limit"))  # fmt: skip
    result.update(train_and_evaluate(llava, shared, out, transfer["stage2"], transfer["stage3"], eval_settings, seed, clock, seed_offset=10))
    result["memory"]["isolated"] = bool(spec.get("isolated"))
    write_json_atomic(out / "result.json", result)
    return result
