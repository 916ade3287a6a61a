"""`hive ablate`: quick mode end to end, identical batches for every fusion, honest parameter counts."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from hive_vlm.ablation.fusions import FUSIONS, build_fusion, insert_image_tokens, match_budgets
from hive_vlm.ablation.report import aggregate, noise_verdicts
from hive_vlm.ablation.settings import DEFAULT_RECIPE, load_study, stage_arguments, study_from_values
from hive_vlm.ablation.shared import shared_path
from hive_vlm.ablation.run import batch_hash, shared_inputs
from hive_vlm.ablation.study import run_ablation
from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator
from hive_vlm.training.alignment_trainer import HiveAlignmentTrainer
from hive_vlm.training.finetune_trainer import HiveFinetuneTrainer


# Where each fusion's own weights live: the only names stage 2 may train.
FUSION_PREFIXES = {
    "hive-paired": ("model.multi_modal_projectors.", "model.cross_attention_layers.", "model.level_embeddings"),
    "hive-all-levels": ("model.multi_modal_projectors.", "model.cross_attention_layers.", "model.level_embeddings"),
    "single-level": ("model.multi_modal_projectors.", "model.cross_attention_layers.", "model.level_embeddings"),
    "shared-softmax": ("model.multi_modal_projectors.", "model.cross_attention_layers."),
    "flat": ("model.multi_modal_projector.",),
    "qformer": ("query_tokens", "qformer.", "language_projection."),
}
VISION_PREFIXES = {"flat": "model.vision_tower.", "qformer": "vision_model."}
STAGE2_STEPS = 7  # of 2 accumulated batches of 4: 14 batches, past the end of the first epoch of 48 captions (12 batches)
STAGE2_SCHEDULE = [f"stage2.max_steps={STAGE2_STEPS}", "stage2.warmup_steps=2", "stage2.lr_scheduler_type=cosine", "stage2.gradient_accumulation_steps=2",
                   "stage2.max_grad_norm=0.01"]  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    # The recipe's five fusions and shared-softmax, trained as `hive train` would train this recipe: stage 2 with a warm-up,
    # a cosine schedule, gradient accumulation and clipping; stage 3 with LoRA on the LLM.
    recipe, study = load_study(quick=True, overrides=[f"study.fusions=[{', '.join(FUSIONS)}]", *STAGE2_SCHEDULE, "stage3.lora_r=4"])
    report = run_ablation(recipe, study, out, isolate=False)
    return out, study, report


def backbones(out):
    """The encoder and LLM folders every fusion of the study at `out` starts from."""
    shared = out / "shared"
    meta = json.loads((shared / "meta.json").read_text())
    return shared_path(shared, meta["vision"]), shared_path(shared, meta["text"]), meta


def test_quick_mode_runs_every_fusion_and_writes_table_json_and_plots(quick):
    out, settings, report = quick
    assert settings.fusions == list(FUSIONS)
    saved = json.loads((out / "ablation.json").read_text())
    assert sorted(saved["aggregate"]) == sorted(FUSIONS)
    for fusion in FUSIONS:
        row = saved["aggregate"][fusion]
        for metric in ("test/accuracy", "test_compositional/accuracy", "mme/perception", "scienceqa/accuracy", "okvqa/vqa_accuracy",
                       "probe/low", "probe/mid", "probe/high", "seconds_per_step/stage2", "memory/peak_rss_delta_mb"):
            assert metric in row, (fusion, metric)
        assert row["seconds_per_step/stage3"]["mean"] > 0
    table = (out / "ablation.md").read_text()
    for fusion in FUSIONS:
        assert f"| {fusion} |" in table
    assert "one seed: cannot tell" in table  # --quick has one seed: no difference may be called real
    # every fusion's readout and the budget setting are named (this recipe keeps flat on the last layer, unmatched)
    assert "| fusion | encoder layers read (0-based) |" in table and "(vision_feature_layer -1) |" in table
    assert "| qformer | the last hidden state" in table and "Budgets not matched (`match_params: false`)" in table
    for name in ("accuracy_vs_steps", "accuracy_per_level"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [point["step"] for point in saved["runs"][0]["curve"]]
    assert steps == [0, 2, 4]  # two checkpoints over 4 stage-3 steps, plus the start


def results(out) -> dict:
    return {path.parent.name.split("-seed")[0]: json.loads(path.read_text()) for path in (out / "runs").glob("*/result.json")}


def test_every_fusion_sees_identical_batches(quick):
    _, settings, report = quick
    runs = report["runs"]
    assert {run["fusion"] for run in runs} == set(FUSIONS)
    for stage, batches in (("stage2", STAGE2_STEPS * 2), ("stage3", settings.stage3["max_steps"])):  # stage 2 accumulates 2 a step
        sequences = {run["fusion"]: run["batch_hashes"][stage] for run in runs}
        reference = sequences["hive-paired"]
        assert len(reference) == batches
        assert len(set(reference)) == batches  # the hashes tell batches apart
        for fusion, hashes in sequences.items():
            assert hashes == reference, f"{fusion} saw other {stage} batches than hive-paired"


def test_recorded_batches_are_the_trainers_seeded_order_rebuilt_independently(quick):
    # Not only the same for every fusion: the batches hashed are the ones a seeded sampler draws (stage 2's seed is
    # seed * 1000 + 2), in order, across stage 2's epoch boundary (with gradient accumulation).
    out, settings, report = quick
    meta, processor, captions, chats = shared_inputs(out / "shared")
    stages = {"stage2": (captions, HiveCaptionCollator(processor, prompt=meta["caption_prompt"], max_length=meta["max_length"]["stage2"]), 2),
              "stage3": (chats, HiveChatCollator(processor, max_length=meta["max_length"]["stage3"]), 3)}  # fmt: skip
    recorded = report["runs"][0]["batch_hashes"]
    for stage, (dataset, collator, seed) in stages.items():
        batch_size = getattr(settings, stage)["per_device_train_batch_size"]
        order, epoch = [], 0
        while len(order) < len(recorded[stage]):  # each epoch: a permutation seeded by data_seed + epoch
            rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            order += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]  # the last batch may be short
            epoch += 1
        expected = [batch_hash(collator([dataset[i] for i in rows])) for rows in order[: len(recorded[stage])]]
        assert recorded[stage] == expected, stage
    assert len(recorded["stage2"]) > len(captions) // settings.stage2["per_device_train_batch_size"]  # it crossed an epoch


def test_every_fusion_trains_as_hive_train_does_with_the_recipes_schedule_accumulation_and_clipping(quick):
    # One engine: the recipe's warm-up, cosine schedule, accumulation and clipping took effect for every fusion (read
    # from what each run logged), and every trainable weight changed while every frozen one stayed bit-identical.
    out, settings, _ = quick
    def cosine(peak, warmup, steps):  # linear warm-up from 0, then cosine decay to 0 (transformers' "cosine")
        return [peak * k / warmup if k < warmup else peak * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (steps - warmup))) for k in range(steps)]

    for name, run in results(out).items():
        stage2, stage3 = run["stages"]["stage2"], run["stages"]["stage3"]
        assert stage2["steps"] == STAGE2_STEPS and stage2["micro_batches"] == 2 * STAGE2_STEPS, name  # 2 batches a step
        assert stage2["learning_rates"] == pytest.approx(cosine(settings.stage2["learning_rate"], 2, STAGE2_STEPS)), name
        # stage 3: the recipe's own 5% warm-up (warmup_steps 0.05 of 4 steps: 1) and cosine
        assert stage3["learning_rates"] == pytest.approx(cosine(settings.stage3["learning_rate"], 1, 4)), name
        assert min(stage2["grad_norms"]) > 0.01 and max(stage2["clipped_grad_norms"]) == pytest.approx(0.01, rel=1e-3), name
        assert stage3["steps"] == stage3["micro_batches"] == 4 and max(stage3["clipped_grad_norms"]) <= 1.0 + 1e-4, name
        for stage in (stage2, stage3):
            assert stage["weights"]["trainable"] > 0 and stage["weights"]["trainable_unchanged"] == [], name
            assert stage["weights"]["frozen_changed"] == [], name
        assert run["parameters"]["stage3"]["llm"]["trainable"] > 0  # LoRA: the same trainer, the same adapters
        assert len(stage2["losses"]) == STAGE2_STEPS


def stage_trainer(fusion, stage: int, values: dict, output_dir):
    """The trainer a study builds for `fusion`'s stage (as `hive_vlm.ablation.run.train_stage` does), not trained."""
    args = stage_arguments(stage, values, output_dir, seed=0)
    trainer_class = HiveAlignmentTrainer if stage == 2 else HiveFinetuneTrainer
    return trainer_class(fusion.model, args, components=fusion, data_collator=lambda rows: rows, train_dataset=[])


def test_reported_parameter_counts_are_the_weights_that_train(quick, tmp_path):
    out, settings, report = quick
    vision, text, meta = backbones(out)
    reported = {run["fusion"]: run["parameters"] for run in report["runs"]}
    adapted = {}
    for name in FUSIONS:
        fusion = build_fusion(name, vision, text, meta["image_token_id"], settings.fusion, seed=0)
        for stage in (2, 3):
            counts = stage_trainer(fusion, stage, getattr(settings, f"stage{stage}"), tmp_path).trainable_counts
            named = list(fusion.model.named_parameters())
            trainable = {n: p.numel() for n, p in named if p.requires_grad}
            assert counts["total"]["trainable"] == sum(trainable.values()) == reported[name][f"stage{stage}"]["total"]["trainable"]
            in_fusion = sum(size for n, size in trainable.items() if n.startswith(FUSION_PREFIXES[name]))
            vision_prefix = VISION_PREFIXES.get(name, "model.vision_model.")
            in_vision = sum(size for n, size in trainable.items() if n.startswith(vision_prefix))
            lora = {n: size for n, size in trainable.items() if ".lora_" in n}
            assert counts["projector"]["trainable"] + counts["cross_attention"]["trainable"] == in_fusion > 0
            assert counts["vision"]["trainable"] == in_vision and counts["llm"]["trainable"] == sum(lora.values())
            assert in_fusion + in_vision + sum(lora.values()) == counts["total"]["trainable"]  # the LLM's own weights never train
            assert (in_vision > 0) == (stage == 3) and (len(lora) > 0) == (stage == 3)
        # stage3.lora_r: every fusion's LLM gets the same adapters (the LLM's attention and MLP projections)
        adapted[name] = sorted(n.split("layers.", 1)[1].split(".lora_A")[0] for n in lora if ".lora_A" in n)
    assert len({tuple(names) for names in adapted.values()}) == 1 and adapted["flat"], adapted
    hive = build_fusion("hive-paired", vision, text, meta["image_token_id"], settings.fusion)
    stage3 = {**settings.stage3, "lora_r": 0}
    counts = stage_trainer(hive, 3, stage3, tmp_path).trainable_counts
    # HIVE reads encoder layers, not the final norm or the pooler: those never get a gradient, so they are not counted.
    assert 0 < counts["vision"]["trainable"] < counts["vision"]["total"] and counts["llm"]["trainable"] == 0
    counts = stage_trainer(hive, 3, {**stage3, "train_llm": True}, tmp_path).trainable_counts  # study.train_llm
    assert counts["llm"]["trainable"] == counts["llm"]["total"] > 0
    # stage2.train_vision: the encoder trains with the fusion in stage 2, the LLM still does not.
    counts = stage_trainer(hive, 2, {**settings.stage2, "train_vision": True}, tmp_path).trainable_counts
    assert counts["vision"]["trainable"] > 0 and counts["llm"]["trainable"] == 0


def test_pretrain_llm_trains_all_of_the_llm_but_its_embeddings_and_head_in_stages_2_and_3(quick, tmp_path):
    # study.pretrain_llm, the authors' setting: the LLM trains with the fusion from stage 2 on, for every fusion alike.
    out, settings, _ = quick
    vision, text, meta = backbones(out)
    recipe, study = load_study(quick=True, overrides=["study.pretrain_llm=true"])
    assert study.stage2["train_llm"] and study.stage3["train_llm"] and not study.stage3["train_llm_embeddings"]
    for name in FUSIONS:
        fusion = build_fusion(name, vision, text, meta["image_token_id"], dataclasses.replace(settings.fusion, shared_softmax_norm="queries_and_keys"))
        edges = {id(p) for module in (fusion.model.get_input_embeddings(), fusion.model.get_output_embeddings()) for p in module.parameters()}
        llm = fusion.component_parameters()["llm"]
        body = [p for p in llm if id(p) not in edges]
        for stage in (2, 3):
            counts = stage_trainer(fusion, stage, getattr(study, f"stage{stage}"), tmp_path).trainable_counts
            assert body and all(p.requires_grad for p in body), (name, stage)
            assert not any(p.requires_grad for p in llm if id(p) in edges), (name, stage)
            assert counts["llm"]["trainable"] == sum(p.numel() for p in body)
            assert counts["projector"]["trainable"] + counts["cross_attention"]["trainable"] > 0
        assert stage_trainer(fusion, 2, settings.stage2, tmp_path).trainable_counts["llm"]["trainable"] == 0  # frozen again without it


def test_gate_init_reaches_the_hive_fusions(quick):
    out, settings, _ = quick
    vision, text, meta = backbones(out)
    fusion_settings = dataclasses.replace(settings.fusion, gate_init=0.25)
    for name in ("hive-paired", "hive-all-levels", "single-level"):
        fusion = build_fusion(name, vision, text, meta["image_token_id"], fusion_settings)
        gates = [p for n, p in fusion.model.named_parameters() if n.endswith("_gate")]
        assert gates and all(torch.all(gate == 0.25) for gate in gates), name


def test_qformer_queries_start_distinct_as_blip2_initialises_them(quick):
    # transformers' Blip2 zeroes query_tokens (a checkpoint overwrites them); trained from scratch, zero queries start
    # identical and the Q-Former's first LayerNorm blows their gradient up. The study starts them as BLIP-2 does.
    out, settings, _ = quick
    vision, text, meta = backbones(out)
    fusion = build_fusion("qformer", vision, text, meta["image_token_id"], settings.fusion, seed=0)
    queries = fusion.model.query_tokens.detach()[0]  # (num_query_tokens, width)
    assert 0.015 < queries.std().item() < 0.025 and torch.cdist(queries, queries).fill_diagonal_(1.0).min() > 0
    assert max(results(out)["qformer"]["stages"]["stage2"]["grad_norms"]) < 1e4  # it was about 4e11 from zero queries


def test_a_finished_run_is_kept_only_for_its_own_settings(quick):
    from hive_vlm.ablation.shared import prepare_shared
    from hive_vlm.ablation.study import _run_identity

    out, settings, _ = quick
    study = json.loads(json.dumps(dataclasses.asdict(settings)))
    widened = json.loads(json.dumps(study))
    widened["fusion"]["intermediate_sizes"] = {"flat": 96}  # --match-params after adding flat: hive-paired's run stays valid
    assert _run_identity(widened, "hive-paired") == _run_identity(study, "hive-paired")
    assert _run_identity(widened, "flat") != _run_identity(study, "flat")
    recipe, _ = load_study(quick=True)
    with pytest.raises(ValueError, match="built from another recipe or study"):  # e.g. another choice of evaluations
        prepare_shared(recipe, dataclasses.replace(settings, benchmarks=["test"]), out / "shared")


def test_match_params_brings_budgets_within_ten_percent(quick):
    out, settings, _ = quick
    vision, text, meta = backbones(out)
    matched = match_budgets(FUSIONS, "hive-paired", vision, text, meta["image_token_id"], settings.fusion)
    target = matched["hive-paired"]["budget"]
    for name in FUSIONS:
        if name == "shared-softmax":  # no width to scale (no MLP): it keeps its own budget
            assert matched[name]["width"] is None and matched[name]["budget"] > 0
            continue
        assert abs(matched[name]["budget"] - target) <= 0.10 * target, (name, matched[name])
    assert matched["flat"]["width"] > 32  # LLaVA's projector had to grow well past the LLM width


def test_insert_image_tokens_keeps_padding_and_masks_labels():
    input_ids = torch.tensor([[0, 0, 1, 7, 8], [1, 5, 6, 7, 8]])  # left padded
    attention_mask = (input_ids != 0).long()
    labels = torch.tensor([[-100, -100, -100, 7, 8], [-100, 5, 6, 7, 8]])
    out = insert_image_tokens(input_ids, attention_mask, labels, 9, 2)
    assert out["input_ids"].tolist() == [[0, 0, 1, 9, 9, 7, 8], [1, 9, 9, 5, 6, 7, 8]]
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]
    assert out["labels"].tolist() == [[-100, -100, -100, -100, -100, 7, 8], [-100, -100, -100, 5, 6, 7, 8]]


def test_noise_rule_needs_a_gap_larger_than_both_stds():
    runs = [{"fusion": "hive-paired", "metrics": {"test/all": v, "params/stage2": 9}} for v in (50.0, 52.0, 54.0)]
    runs += [{"fusion": "flat", "metrics": {"test/all": v, "params/stage2": 7}} for v in (47.0, 49.0, 51.0)]  # 3 lower, stds 2 + 2
    runs += [{"fusion": "qformer", "metrics": {"test/all": v, "params/stage2": 5}} for v in (40.0, 41.0, 42.0)]  # 11 lower, stds 2 + 1
    verdicts = {v["fusion"]: v for v in noise_verdicts(aggregate(runs), ["test"])}
    assert len(noise_verdicts(aggregate(runs), ["test"])) == 2  # the parameter counts are not a quality metric
    assert verdicts["flat"]["verdict"] == "within seed noise"
    assert verdicts["flat"]["difference"] == -3.0
    assert verdicts["qformer"]["verdict"] == "qformer worse beyond seed noise"


def test_recipe_errors_name_the_key():
    values = yaml.safe_load(DEFAULT_RECIPE.read_text())
    assert study_from_values(values)[1].seeds == [0, 1, 2]
    with pytest.raises(ValueError, match=r"stage3: unknown key\(s\) \['stepz'\]"):
        study_from_values({**values, "stage3": {"stepz": 3}})
    with pytest.raises(ValueError, match=r"stage2.learning_rate: expected float, got str \('1e-3'\) \(YAML reads 1e-3 as text"):
        load_study(DEFAULT_RECIPE, overrides=["stage2.learning_rate=1e-3"])
    with pytest.raises(ValueError, match=r"stage3.train_vision: expected bool, got str"):
        study_from_values({**values, "stage3": {"train_vision": "yes please"}})
    assert load_study(DEFAULT_RECIPE, overrides=["stage2.learning_rate=1.0e-3"])[1].stage2["learning_rate"] == 1e-3
    with pytest.raises(ValueError, match="study.fusions"):
        study_from_values({**values, "study": {"fusions": ["hive-paired", "perceiver"]}})
    with pytest.raises(ValueError, match=r"study: unknown key\(s\) \['seedz'\]"):
        study_from_values({**values, "study": {"seedz": 2}})
    with pytest.raises(ValueError, match=r"study.fusion: unknown key\(s\) \['gate_init'\] \(the HIVE fusions take them from model.hive\)"):
        study_from_values({**values, "study": {"fusion": {"gate_init": 0.5}}})
    with pytest.raises(ValueError, match="streaming: false"):
        study_from_values({**values, "data": {**values["data"], "stage3": {"source": "chats.json", "streaming": True}}})
    with pytest.raises(ValueError, match=r"eval\[0\].benchmark: unknown benchmark 'vqav2'"):
        study_from_values({**values, "eval": [{"benchmark": "vqav2", "data": "vqav2/"}]})
    with pytest.raises(ValueError, match=r"eval\[0\].protocol: 'loose' is not one of llava-qa's"):
        study_from_values({**values, "eval": [{"benchmark": "llava-qa", "data": "t.json", "protocol": "loose"}]})
    with pytest.raises(ValueError, match=r"eval\[0\]: unknown key\(s\) \['path'\]"):
        study_from_values({**values, "eval": [{"benchmark": "llava-qa", "path": "t.json"}]})
    with pytest.raises(ValueError, match=r"study.benchmarks: \['tset'\] must name some of the recipe's evaluations"):
        study_from_values({**values, "study": {"benchmarks": ["tset"]}})  # at load, before anything trains
    with pytest.raises(ValueError, match="study.benchmarks"):
        study_from_values({**values, "study": {"benchmarks": []}})
    with pytest.raises(ValueError, match=r"eval\[0\]: llava-qa has no hive-shapes layout"):
        study_from_values({**values, "eval": [{"benchmark": "llava-qa", "data": "shapes"}]})
    own_data = {**values["data"], "stage2": {"source": "pairs/", "format": "disk"}, "stage3": {"source": "chats.json", "format": "llava"}}
    with pytest.raises(ValueError, match="the recipe has no `eval` section"):
        study_from_values({**values, "data": own_data})
    assert load_study(DEFAULT_RECIPE, overrides=["stage3.vision_learning_rate=0.0"])[1].stage3["vision_learning_rate"] == 0.0
    with pytest.raises(ValueError, match="unknown fusion 'perceiver'"):
        build_fusion("perceiver", "v", "t", 5)
    with pytest.raises(ValueError, match="pretrain_llm already trains the LLM in stage 3"):
        study_from_values({**values, "study": {"train_llm": True, "pretrain_llm": True}})
    with pytest.raises(ValueError, match=r"study.pretrain_llm trains the whole LLM; drop stage3.lora_r"):
        study_from_values({**values, "stage3": {**values["stage3"], "lora_r": 4}, "study": {"pretrain_llm": True}})
    with pytest.raises(ValueError, match=r"study.fusion.shared_softmax_norm must be one of \('image_keys', 'queries_and_keys'\)"):
        study_from_values({**values, "study": {"fusion": {"shared_softmax_norm": "all"}}})
    assert study_from_values({**values, "study": {}})[1].match_params  # matched budgets unless a recipe says otherwise
    # hive train honours these and a study cannot (one process per run, full precision): refused, naming each
    with pytest.raises(ValueError, match=r"stage3: a study cannot honour \['fsdp', 'quantization'\] \(fsdp: every run"):
        study_from_values({**values, "stage3": {**values["stage3"], "lora_r": 4, "fsdp": "full_shard",
                                                "quantization": {"load_in_4bit": True}}})  # fmt: skip
    with pytest.raises(ValueError, match=r"a study cannot honour \['auto_find_batch_size'\] \(auto_find_batch_size: every fusion"):
        study_from_values({**values, "stage2": {**values["stage2"], "auto_find_batch_size": True}})
    # a key that cannot go with what the study sets itself fails at load, naming the stage, not in a run's process
    with pytest.raises(ValueError, match=r"stage2: .*dataloader_prefetch_factor.* \(a study sets .*'dataloader_num_workers': 0"):
        study_from_values({**values, "stage2": {**values["stage2"], "dataloader_num_workers": 4, "dataloader_prefetch_factor": 2}})
    with pytest.raises(ValueError, match=r"study.pretrain_llm sets stage2.train_llm_embeddings to False, and the recipe's stage2 says True"):
        study_from_values({**values, "stage2": {**values["stage2"], "train_llm_embeddings": True}, "study": {"pretrain_llm": True}})
    with pytest.raises(ValueError, match=r"model.hive: .* \['cross_attention_num_heads'\] would be ignored"):
        study_from_values({**values, "model": {**values["model"], "hive": {**values["model"]["hive"], "cross_attention_num_heads": 2}}})
    with pytest.raises(ValueError, match=r"model.dtype: a study builds every fusion in float32"):
        study_from_values({**values, "model": {**values["model"], "dtype": "bfloat16"}})
    with pytest.raises(ValueError, match=r"label_smoothing_factor \(0.1\): the Trainer would smooth an unshifted loss"):
        study_from_values({**values, "stage3": {**values["stage3"], "label_smoothing_factor": 0.1}})
    # ... and every other key hive train honours, a study honours too
    _, honoured = study_from_values({**values, "stage3": {**values["stage3"], "lora_r": 4, "lora_target_modules": ".*q_proj$"}})
    args = stage_arguments(3, honoured.stage3, "unused", seed=0)
    assert args.lora_target_modules == ".*q_proj$" and args.lora_r == 4


def test_shipped_ablation_recipes_parse():
    _, learning = load_study(DEFAULT_RECIPE.parent / "ablation-shapes-learning.yaml")
    assert learning.stage2["train_vision"] and learning.fusion.gate_init == 0.1
    assert learning.stage2 == {"max_steps": 600, "per_device_train_batch_size": 32, "learning_rate": 2e-3, "vision_learning_rate": 1e-3,
                               "weight_decay": 0.0, "train_vision": True, "train_llm": False, "train_llm_embeddings": True, "use_cpu": True,
                               "lr_scheduler_type": "cosine", "warmup_steps": 0.05}
    recipe, default = load_study(DEFAULT_RECIPE)
    assert not default.stage2["train_vision"] and default.fusion.gate_init == 0.0 and recipe.stages == [0, 1, 2, 3]
    swin_recipe, swin = load_study(DEFAULT_RECIPE.parent / "ablation-shapes-learning-swin.yaml")  # the learning study, Swin encoder
    assert swin_recipe.model.vision_config["model_type"] == "swin"
    assert {key: getattr(swin, key) for key in ("stage2", "stage3", "fusion", "eval", "seeds")} == {
        key: getattr(learning, key) for key in ("stage2", "stage3", "fusion", "eval", "seeds")
    }
    # A recipe without a study section: the default fusions and seeds, and the study says so.
    recipe, tiny = load_study(DEFAULT_RECIPE.parent / "tiny-shapes.yaml")
    assert tiny.default_study and tiny.fusions == list(FUSIONS) and tiny.seeds == [0, 1, 2]
    assert tiny.stage3["lora_r"] == 4 and tiny.stage2["max_steps"] == recipe.stage2["max_steps"]


@pytest.mark.slow
def test_a_study_on_a_multi_scale_encoder_runs_hive_and_flat(tmp_path):
    # recipes/ablation-shapes-swin.yaml: the same study around a 4-stage Swin, whose levels differ in width and scale.
    recipe, settings = load_study(DEFAULT_RECIPE.parent / "ablation-shapes-swin.yaml", quick=True)
    settings = dataclasses.replace(settings, fusions=["hive-paired", "single-level", "flat"])
    report = run_ablation(recipe, settings, tmp_path, isolate=False)
    assert sorted(report["aggregate"]) == ["flat", "hive-paired", "single-level"]
    vision, text, meta = backbones(tmp_path)
    assert json.loads((Path(vision) / "config.json").read_text())["model_type"] == "swin"
    fusion = build_fusion("hive-paired", vision, text, meta["image_token_id"], settings.fusion)
    widths = [projector.linear_1.in_features for projector in fusion.model.model.multi_modal_projectors]
    assert widths == [64, 128, 128]  # stages 1-3: one projector per stage width


def test_peak_memory_window_sees_an_allocation_made_inside_it():
    from hive_vlm.ablation.run import peak_rss_mb, reset_peak_rss

    method, baseline = reset_peak_rss()
    block = torch.ones(200 * 2**20, dtype=torch.uint8)  # 200 MiB, touched
    peak = peak_rss_mb(method)
    del block
    assert peak - baseline >= 180, (method, baseline, peak)


def test_hive_ablate_runs_on_the_recipe_hive_train_reads(tmp_path, capsys, monkeypatch):
    # The natural first study: the recipe a user trains with, with no study section of its own.
    from hive_vlm.cli import main

    monkeypatch.chdir(DEFAULT_RECIPE.parents[1])
    assert main(["ablate", "--recipe", "recipes/tiny-shapes.yaml", "--quick", "--out", str(tmp_path), "--no-isolate"]) == 0
    printed = capsys.readouterr().out
    assert "the recipe has no `study` section: the default fusions" in printed
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert sorted(report["aggregate"]) == sorted(FUSIONS)
    assert "The recipe has no `study` section" in (tmp_path / "ablation.md").read_text()
    assert report["study"]["stage3"]["lora_r"] == 4  # tiny-shapes' stage 3 adapts the LLM with LoRA: so does every fusion
    assert all(run["parameters"]["stage3"]["llm"]["trainable"] > 0 for run in report["runs"])  # the LoRA weights
    # the same file still trains: nothing in it is ablation-only
    assert main(["train", "--recipe", "recipes/tiny-shapes.yaml", "--stage", "1", "--output-dir", str(tmp_path / "train"),
                 "stage1.max_steps=1", "data.shapes.num_train=16"]) == 0


def llava_fixture(folder):
    """A user's data in the published formats: captions (save_to_disk), LLaVA-JSON chats for stage 3, a held-out
    LLaVA-JSON test file whose records carry reference answers and a `level`, and a pretrained LLM folder with its
    own tokenizer (which has no image placeholder yet)."""
    import datasets
    from PIL import Image
    from transformers import AutoConfig, AutoModelForCausalLM

    from hive_vlm.data.tokenizer import build_tokenizer

    colors = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    (folder / "images").mkdir(parents=True)
    rows = []
    for index in range(18):
        color, count = list(colors)[index % 3], 1 + index % 2
        image = Image.new("RGB", (32, 32), (128, 128, 128))
        for k in range(count):
            image.paste(colors[color], (2 + 16 * k, 8, 12 + 16 * k, 18))
        image.save(folder / "images" / f"{index}.png")
        rows.append((f"{index}.png", color, count))

    def record(name, color, count, level, with_answers):
        question, answer = ("what color is the square ?", color) if level == "low" else ("how many squares ?", str(count))
        item = {"id": f"{name}-{level}", "image": name, "level": level,
                "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}
        if with_answers:
            item["answers"] = [answer] * 9 + ["none"]
        return item

    train = [record(n, c, k, level, False) for n, c, k in rows[:12] for level in ("low", "high")]
    (folder / "chats.json").write_text(json.dumps(train))
    test = [record(n, c, k, level, i % 2 == 0) for i, (n, c, k) in enumerate(rows[12:]) for level in ("low", "high")]
    (folder / "test.json").write_text(json.dumps(test))
    images = [Image.open(folder / "images" / n).convert("RGB") for n, _, _ in rows[:12]]
    datasets.Dataset.from_dict({"image": images, "text": [f"{k} {c} squares" for _, c, k in rows[:12]]}).save_to_disk(str(folder / "captions"))
    words = ["what color is the square ?", "how many squares ?", "red green blue 1 2 none squares describe the image ."]
    tokenizer = build_tokenizer(words)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    return {
        "name": "my-llava-data", "output_dir": str(folder / "train"),
        "model": {"vision_config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "intermediate_size": 64},
                  "text_model": str(folder / "llm"), "hive": {"cross_attention_layers": [[0, 0], [1, 1]]}},
        "data": {"max_length": 64, "stage1": {"source": str(folder / "captions"), "format": "disk"},
                 "stage2": {"source": str(folder / "captions"), "format": "disk"},
                 "stage3": {"source": str(folder / "chats.json"), "format": "llava", "image_root": str(folder / "images")}},
        "stage1": {"use_cpu": True}, "stage2": {"use_cpu": True}, "stage3": {"use_cpu": True},
        "eval": [{"benchmark": "llava-qa", "data": str(folder / "test.json"), "image_root": str(folder / "images"), "name": "qa"}],
        "study": {"fusions": ["hive-paired", "flat"], "seeds": [0]},
    }  # fmt: skip


def test_a_quick_study_on_llava_json_data_reports_each_level(tmp_path):
    from hive_vlm.eval.llava_qa import HiveLlavaQABenchmark

    recipe, study = study_from_values(llava_fixture(tmp_path / "data"), quick=True)
    assert not study.default_study
    report = run_ablation(recipe, study, tmp_path / "study", isolate=False)
    out = tmp_path / "study"
    vision, text, meta = backbones(out)
    assert text == str(tmp_path / "data" / "llm")  # the user's pretrained LLM, no stage 0
    # its tokenizer gained the image placeholder LLaVA and BLIP-2 put inline; every fusion's embeddings grew to match
    assert meta["vocab_size"] == json.loads((Path(text) / "config.json").read_text())["vocab_size"] + 1
    assert not meta["shapes"] and meta["validation"]["label"] == "qa"  # stage-3 checkpoints read the first evaluation
    table = (out / "ablation.md").read_text()
    assert "## qa (llava-qa)" in table and "| fusion | vqa_accuracy | low | high |" in table
    assert "Linear probe" not in table  # the probe needs hive-shapes' labels
    for run in report["runs"]:
        saved = json.loads((out / "runs" / f"{run['fusion']}-seed0" / "final" / "qa.json").read_text())
        assert saved["num_examples"] == 4  # --quick scores 4 questions
        samples = saved["samples"]
        for level in ("low", "high"):  # each level's row: the same scorer on that level's questions only
            group = [s for s in samples if s["reference"]["level"] == level]
            expected = HiveLlavaQABenchmark().score([s["prediction"] for s in group], [s["reference"] for s in group], saved["protocol"])
            assert run["metrics"][f"qa/{level}"] == expected["vqa_accuracy"]
            assert f"| {run['fusion']} | {run['metrics']['qa/vqa_accuracy']:.1f} |" in table
        assert run["metrics"]["qa/vqa_accuracy"] == saved["scores"]["vqa_accuracy"]
        assert len(run["curve"]) == 3 and all("vqa_accuracy" in point for point in run["curve"])
