"""Three-stage training (issue 5): recipes, the three trainers, LoRA round trip, resume, DDP, export-vision."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch._dynamo.utils import counters
from transformers import AutoModel, SwinModel, ViTImageProcessorPil, ViTModel

from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator, HiveMaskedImageCollator
from hive_vlm.tiny import tiny_vision_config
from hive_vlm.data.tokenizer import build_tokenizer
from isolated import run_isolated
from hive_vlm.training.alignment_config import HiveAlignmentConfig
from hive_vlm.training.alignment_trainer import HiveAlignmentTrainer
from hive_vlm.training.callbacks import COMPLETE_MARKER, last_complete_checkpoint
from hive_vlm.training.export_vision import export_vision
from hive_vlm.training.finetune_config import HiveFinetuneConfig
from hive_vlm.training.finetune_trainer import HiveFinetuneTrainer, merge_adapter
from hive_vlm.training.mim_config import HiveMIMConfig
from hive_vlm.training.mim_trainer import HiveMIMModel, HiveMIMTrainer
from hive_vlm.training.recipe import load_recipe, parse_recipe
from modeling_hive import HiveForConditionalGeneration
from tiny_hive import tiny_model
from training_runs import REPO, SMALL, hive_train


WORDS = "a the red blue green small large circle square triangle striped dotted solid is of left right what color shape".split()


def processor_for(vocab_words=WORDS):
    tokenizer = build_tokenizer([" ".join(vocab_words), "describe the image ."])
    return SimpleNamespace(image_processor=ViTImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer)


def images(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(32, 32, 3, generator=generator) * 255).byte().numpy()) for _ in range(n)]


def caption_rows(n=8, seed=0):
    rng = random.Random(seed)
    return [{"image": image, "text": " ".join(rng.choice(WORDS) for _ in range(6))} for image in images(n, seed)]


def chat_rows(n=8, seed=0):
    rng = random.Random(seed)
    rows = []
    for image in images(n, seed):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": rng.choice(["red", "blue", "green"])}]},
        ]
        rows.append({"image": image, "messages": messages})
    return rows


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_trainable_changed_and_frozen_identical(model, before):
    changed, unchanged_trainable = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (changed if not torch.equal(p, before[name]) else unchanged_trainable).append(name)
        else:
            assert torch.equal(p, before[name]), f"frozen parameter {name} changed"
    assert changed and not unchanged_trainable, f"trainable parameters that did not change: {unchanged_trainable}"


def args_for(config_class, tmp_path, **kwargs):
    values = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=5e-3,
                  report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, seed=0)
    values.update(kwargs)
    return config_class(**values)


# ------------------------------------------------------------------------------------------------- recipes


def test_shipped_recipes_parse_and_build_their_stage_configs():
    tiny = load_recipe(REPO / "recipes" / "tiny-shapes.yaml")
    assert tiny.model.hive["cross_attention_layers"] == [[1, 1], [3, 3]]
    assert tiny.stage_arguments(3, "x").lora_r == 4
    gpu = load_recipe(REPO / "recipes" / "siglip-qwen2-llava.yaml")
    assert gpu.model.vision_model.startswith("google/siglip") and gpu.model.text_model.startswith("Qwen/")
    stage2, stage3 = gpu.stage_arguments(2, "x", use_cpu=True), gpu.stage_arguments(3, "x", use_cpu=True)
    assert stage2.bf16 and stage2.train_vision is False and stage3.lora_r == 64
    assert stage3.vision_learning_rate < stage3.learning_rate
    assert gpu.data.stage3.format == "llava" and gpu.data.stage2.streaming
    # The HIVE config the GPU recipe asks for is valid for SigLIP-so400m (27 layers) and Qwen2-0.5B (24 layers).
    from modeling_hive import HiveConfig
    from transformers import Qwen2Config, SiglipVisionConfig

    HiveConfig(vision_config=SiglipVisionConfig(num_hidden_layers=27, hidden_size=1152, num_attention_heads=16).to_dict(),
               text_config=Qwen2Config(num_hidden_layers=24, hidden_size=896, num_attention_heads=14, num_key_value_heads=2).to_dict(),
               **gpu.model.hive)


def recipe_values():
    return yaml.safe_load((REPO / "recipes" / "tiny-shapes.yaml").read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: v.update(colour="red"), "unknown key(s) ['colour']"),
        (lambda v: v["model"].update(vision_layers=3), "recipe.model: unknown key(s) ['vision_layers']"),
        (lambda v: v["stage2"].update(max_stepz=3), "stage2: unknown key(s) ['max_stepz']"),
        (lambda v: v["data"]["stage1"].update(formt="parquet"), "recipe.data.stage1: unknown key(s) ['formt']"),
        (lambda v: v.update(seed="zero"), "recipe.seed: expected int"),
        (lambda v: v["data"].update(max_length="long"), "recipe.data.max_length: expected int"),
        (lambda v: v["data"]["stage2"].update(format="csv"), "recipe.data.stage2.format"),
        (lambda v: v.pop("output_dir"), "missing required key(s) ['output_dir']"),
        (lambda v: v["model"].update(vision_model="google/vit"), "exactly one of vision_model"),
        (lambda v: v["stage3"].update(lora_r=-1), "stage3: lora_r must be 0"),
    ],
)
def test_bad_recipes_fail_at_load_naming_the_key(edit, message):
    values = recipe_values()
    edit(values)
    with pytest.raises(ValueError) as error:
        parse_recipe(values)
    assert message in str(error.value)


def test_overrides_apply_and_bad_ones_are_named(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "tiny-shapes.yaml", ["stage2.max_steps=7", "model.hive.hierarchy_mode=all_levels"])
    assert recipe.stage_arguments(2, "x").max_steps == 7 and recipe.model.hive["hierarchy_mode"] == "all_levels"
    with pytest.raises(ValueError, match="key=value"):
        load_recipe(REPO / "recipes" / "tiny-shapes.yaml", ["stage2.max_steps"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------------ stage 1


@pytest.mark.parametrize("family", ["vit", "clip"])
def test_stage1_mim_trains_the_encoder_and_saves_an_automodel_checkpoint(tmp_path, family):
    torch.manual_seed(0)
    config = tiny_vision_config(family)
    encoder = ViTModel(config, use_mask_token=True) if family == "vit" else AutoModel.from_config(config)
    model = HiveMIMModel(encoder)
    assert model.uses_mask_token == (family == "vit")  # CLIP has no mask token: pixel-level masking
    before = snapshot(model)
    processor = processor_for()
    collator = HiveMaskedImageCollator(processor, patch_size=8, mask_ratio=0.5)
    trainer = HiveMIMTrainer(model=model, args=args_for(HiveMIMConfig, tmp_path), data_collator=collator, train_dataset=[{"image": i} for i in images(8)])
    trainer.train()
    assert_trainable_changed_and_frozen_identical(model, before)
    trainer.save_encoder(tmp_path / "encoder", processor.image_processor)
    loaded = AutoModel.from_pretrained(tmp_path / "encoder")
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).last_hidden_state, encoder(pixel_values).last_hidden_state)


def test_stage1_mim_on_swin_reconstructs_each_last_stage_cell():
    # SimMIM for a multi-scale encoder: each last-stage token predicts the pixels of the cell it covers.
    torch.manual_seed(0)
    model = HiveMIMModel(SwinModel(tiny_vision_config("swin"), use_mask_token=True))
    assert model.uses_mask_token and (model.patch_size, model.stride) == (2, 16)  # 2-pixel patches, a 2x2 last stage
    collator = HiveMaskedImageCollator(processor_for(), patch_size=2, mask_ratio=0.5, mask_patch_size=16)
    batch = collator([{"image": image} for image in images(2)])
    outputs = model(**batch)
    assert outputs.reconstruction.shape == (2, 4, 16 * 16 * 3)
    outputs.loss.backward()
    assert model.encoder.embeddings.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"smaller than the 16-pixel area .* multiple of 16 pixels \(stage1.mask_patch_size\)"):
        model(**HiveMaskedImageCollator(processor_for(), patch_size=2, mask_ratio=0.5, mask_patch_size=8)([{"image": i} for i in images(2)]))


def test_mim_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    model = HiveMIMModel(ViTModel(tiny_vision_config("vit"), use_mask_token=True))
    pixel_values = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    out = model(pixel_values, mask)
    target = model.patchify(pixel_values)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = (out.reconstruction - target).abs().mean(-1)[:, :4].mean()
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------------------------------------- stage 2 & 3


def test_stage2_trains_fusion_only_with_the_llm_frozen_and_logs_gates(tmp_path):
    processor = processor_for()
    model = tiny_model(processor)
    before = snapshot(model)
    trainer = HiveAlignmentTrainer(model, args_for(HiveAlignmentConfig, tmp_path), data_collator=HiveCaptionCollator(processor), train_dataset=caption_rows())
    trainer.train()
    assert_trainable_changed_and_frozen_identical(model, before)
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    assert not any(p.requires_grad for p in model.model.vision_model.parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"gate/attn_t1_v1", "gate/mlp_t3_v3", "grad_norm", "learning_rate"} <= set(logs[-1])
    assert logs[0]["trainable/llm"] == 0 and logs[0]["trainable/cross_attention"] > 0
    assert any(abs(logs[-1][k]) > 0 for k in logs[-1] if k.startswith("gate/"))  # the gates opened


def test_stage2_can_train_the_encoder_when_the_recipe_says_so(tmp_path):
    processor = processor_for()
    model = tiny_model(processor)
    before = snapshot(model)
    args = args_for(HiveAlignmentConfig, tmp_path, train_vision=True, vision_learning_rate=1e-4)
    trainer = HiveAlignmentTrainer(model, args, data_collator=HiveCaptionCollator(processor), train_dataset=caption_rows())
    trainer.train()
    assert_trainable_changed_and_frozen_identical(model, before)
    assert any(p.requires_grad for p in model.model.vision_model.parameters())
    vision = {id(p) for p in model.model.vision_model.parameters()}
    for group in trainer.optimizer.param_groups:  # the encoder at its own learning rate, the fusion at learning_rate
        in_vision = {id(p) in vision for p in group["params"]}
        assert len(in_vision) == 1 and group["initial_lr"] == (1e-4 if in_vision == {True} else args.learning_rate)


@pytest.mark.parametrize("embeddings", [True, False])
def test_stage2_train_llm_trains_the_llm_with_the_fusion_as_the_authors_code_does(tmp_path, embeddings):
    # stage2.train_llm (the authors' stage 2 trains the LLM); train_llm_embeddings: false keeps its embeddings and head
    # frozen, as their code does. The encoder stays frozen.
    processor = processor_for()
    model = tiny_model(processor)
    before = snapshot(model)
    args = args_for(HiveAlignmentConfig, tmp_path, train_llm=True, train_llm_embeddings=embeddings)
    trainer = HiveAlignmentTrainer(model, args, data_collator=HiveCaptionCollator(processor), train_dataset=caption_rows())
    trainer.train()
    assert_trainable_changed_and_frozen_identical(model, before)
    edges = [*model.get_input_embeddings().parameters(), *model.get_output_embeddings().parameters()]
    assert all(p.requires_grad == embeddings for p in edges)
    assert all(p.requires_grad for p in model.model.language_model.layers.parameters())
    assert not any(p.requires_grad for p in model.model.vision_model.parameters())
    llm = trainer.trainable_counts["llm"]
    assert llm["trainable"] == llm["total"] - (0 if embeddings else sum(p.numel() for p in edges))
    with pytest.raises(ValueError, match="train_llm trains the whole LLM and lora_r adapts it"):
        args_for(HiveFinetuneConfig, tmp_path, train_llm=True, lora_r=4)


def test_loss_falls_on_a_batch_the_model_can_memorise(tmp_path):
    processor = processor_for()
    model = tiny_model(processor, gate_init=0.5)
    # A random tiny LLM's head (std 0.02 after a final norm) cannot express a confident prediction, whatever feeds it;
    # a pretrained head can. Give it pretrained-like scale, so the frozen-LLM fusion has something to steer.
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    rows = caption_rows(1) * 64  # one image-caption pair: memorisable through the fusion alone
    args = args_for(HiveAlignmentConfig, tmp_path, max_steps=60, learning_rate=1e-2, train_sampling_strategy="sequential")
    trainer = HiveAlignmentTrainer(model, args, data_collator=HiveCaptionCollator(processor), train_dataset=rows)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0], losses


def test_stage3_lora_trains_encoder_fusion_and_adapters_with_a_lower_encoder_lr(tmp_path):
    processor = processor_for()
    model = tiny_model(processor, gate_init=0.3)
    args = args_for(HiveFinetuneConfig, tmp_path, lora_r=4, lora_alpha=8, vision_learning_rate=1e-3, max_steps=5)
    trainer = HiveFinetuneTrainer(model, args, data_collator=HiveChatCollator(processor), train_dataset=chat_rows())
    before = snapshot(model)  # LoRA is injected by now
    lora_names = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora_names and all(".language_model." in f".{n}" for n in lora_names)  # LoRA stays inside the LLM
    trainer.train()
    for name, p in model.named_parameters():
        if "lora_" in name or name.startswith(("model.multi_modal_projectors", "model.cross_attention_layers")):
            assert p.requires_grad and not torch.equal(p, before[name]), name
        elif name.startswith("model.language_model"):
            assert not p.requires_grad and torch.equal(p, before[name]), name
    vision_in_use = {id(p) for p in model.vision_parameters_in_use()}
    groups = trainer.optimizer.param_groups
    vision_groups = [g for g in groups if any(id(p) in vision_in_use for p in g["params"])]
    assert vision_groups and all(g["initial_lr"] == 1e-3 and all(id(p) in vision_in_use for p in g["params"]) for g in vision_groups)
    assert all(g["initial_lr"] == args.learning_rate for g in groups if g not in vision_groups)


def test_stage3_without_lora_keeps_the_llm_frozen(tmp_path):
    processor = processor_for()
    model = tiny_model(processor, gate_init=0.3)
    before = snapshot(model)
    trainer = HiveFinetuneTrainer(model, args_for(HiveFinetuneConfig, tmp_path), data_collator=HiveChatCollator(processor), train_dataset=chat_rows())
    trainer.train()
    assert_trainable_changed_and_frozen_identical(model, before)
    assert trainer.lora_model is None and not any(p.requires_grad for p in model.model.language_model.parameters())


@pytest.mark.parametrize(
    "targets, message",
    [(r".*\.(q_proj|v_proj)$", "LLM modules only"), (r".*\.no_such_proj$", "lora_target_modules=.*matches no module")],
    ids=["outside-the-llm", "matching-nothing"],
)
def test_lora_targets_outside_the_llm_or_matching_nothing_are_refused(tmp_path, targets, message):
    processor = processor_for()
    args = args_for(HiveFinetuneConfig, tmp_path, lora_r=4, lora_target_modules=targets)
    with pytest.raises(ValueError, match=message):
        HiveFinetuneTrainer(tiny_model(processor), args, data_collator=HiveChatCollator(processor), train_dataset=chat_rows())


def test_lora_adapter_round_trip_reproduces_logits(tmp_path):
    processor = processor_for()
    model = tiny_model(processor, gate_init=0.3)
    args = args_for(HiveFinetuneConfig, tmp_path / "run", lora_r=4, lora_alpha=8, max_steps=3)
    trainer = HiveFinetuneTrainer(model, args, data_collator=HiveChatCollator(processor), train_dataset=chat_rows())
    trainer.train()
    batch = HiveChatCollator(processor)(chat_rows(2, seed=1))
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
    trainer.save_adapter(tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / "adapter"))
    trainer.unload_lora().save_pretrained(tmp_path / "base")
    merged = merge_adapter(HiveForConditionalGeneration.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert type(merged) is HiveForConditionalGeneration and not any("lora_" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "merged")
    reloaded = HiveForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "merged" / "modeling_hive.py").exists()


def test_non_finite_loss_stops_training_naming_the_step(tmp_path):
    processor = processor_for()
    model = tiny_model(processor)
    before = snapshot(model)

    class Poisoned(HiveCaptionCollator):
        def __call__(self, examples):
            batch = super().__call__(examples)
            batch["pixel_values"] = batch["pixel_values"] * 1e38 * 1e38  # inf pixels -> the model refuses them
            return batch

    trainer = HiveAlignmentTrainer(model, args_for(HiveAlignmentConfig, tmp_path), data_collator=Poisoned(processor), train_dataset=caption_rows())
    with pytest.raises(ValueError, match="NaN or inf"):
        trainer.train()
    model.model.multi_modal_projectors[0].linear_1.weight.data.fill_(float("nan"))
    before = snapshot(model)
    trainer = HiveAlignmentTrainer(model, args_for(HiveAlignmentConfig, tmp_path), data_collator=HiveCaptionCollator(processor), train_dataset=caption_rows())
    with pytest.raises(FloatingPointError, match="at step 1") as error:
        trainer.train()
    assert "component" in str(error.value)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) or torch.isnan(before[name]).any(), f"{name} changed after the guard fired"


# ------------------------------------------------------------------------------------------ the whole recipe


def test_stage0_pretraining_lowers_the_loss_on_the_text(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from hive_vlm.training.lm_config import HiveLMConfig
    from hive_vlm.training.lm_trainer import HiveLMTrainer, pretraining_sequences

    from modeling_hive.processing_hive import HIVE_CHAT_TEMPLATE

    tokenizer = processor_for().tokenizer
    chats = [row["messages"] for row in chat_rows(4)]
    sequences = pretraining_sequences(["a red circle", "a blue square"] * 4, chats, tokenizer, HIVE_CHAT_TEMPLATE, 64, "describe :")
    assert len(sequences) == 12 and sequences[0][: len(tokenizer("describe :")["input_ids"])] == tokenizer("describe :")["input_ids"]
    config = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))

    def loss():
        batch = torch.tensor([sequences[0]])
        with torch.no_grad():
            return model(input_ids=batch, labels=batch).loss.item()

    before = loss()
    args = HiveLMConfig(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=4, learning_rate=1e-2,
                        save_strategy="no", report_to="none", use_cpu=True)
    assert args.warmup_steps == 1 and args.lr_scheduler_type == "cosine"
    HiveLMTrainer(model, args, tokenizer, sequences).train()
    assert loss() < 0.5 * before
    with pytest.raises(ValueError, match="no text to train on"):
        HiveLMTrainer(model, args, tokenizer, [])


@pytest.mark.slow
def test_hive_train_runs_all_stages_and_final_loads_with_pipeline(tmp_path):
    # With a stage0 section, stage 0 pretrains the LLM on the captions and chats before stage 2 connects it.
    hive_train(["--recipe", "recipes/tiny-shapes.yaml", "--output-dir", str(tmp_path / "run"), *SMALL, "stage0.max_steps=3",
                "stage0.use_cpu=true", "data.shapes.turns_per_chat=2"])
    run = tmp_path / "run"
    stage0 = load_file(run / "stage0" / "model" / "model.safetensors")
    random_llm = load_file(run / "backbones" / "text" / "model.safetensors")
    stage2_weights = load_file(run / "stage2" / "model" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(stage0[name], random_llm[name])
    assert torch.equal(stage0[name], stage2_weights["model.language_model.layers.0.self_attn.q_proj.weight"])
    assert AutoModel.from_pretrained(run / "stage1" / "model").config.model_type == "vit"
    for folder in ("stage2/model", "stage3/model", "stage3/adapter", "stage3/base", "final"):
        assert (run / folder).is_dir(), folder
    from transformers import AutoModelForImageTextToText, pipeline

    model = AutoModelForImageTextToText.from_pretrained(run / "final", trust_remote_code=True)
    assert isinstance(model, HiveForConditionalGeneration)
    vqa = pipeline("visual-question-answering", model=str(run / "final"), trust_remote_code=True)
    answer = vqa(image=images(1)[0], question="what color is the circle ?", max_new_tokens=3)
    assert isinstance(answer[0]["answer"], str)
    # the encoder of the final model is the stage-1 encoder, trained further in stage 3
    stage1 = load_file(run / "stage1" / "model" / "model.safetensors")
    final = load_file(run / "final" / "model.safetensors")
    assert torch.equal(stage1["encoder.layer.0.attention.attention.query.weight"], load_file(run / "stage2" / "model" / "model.safetensors")["model.vision_model.encoder.layer.0.attention.attention.query.weight"])
    assert not torch.equal(stage1["encoder.layer.0.attention.attention.query.weight"], final["model.vision_model.encoder.layer.0.attention.attention.query.weight"])
    # a second run into the same folder is refused unless resumed
    result = subprocess.run([sys.executable, "-m", "hive_vlm.cli", "train", "--recipe", "recipes/tiny-shapes.yaml", "--output-dir", str(run)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "--resume" in result.stderr


@pytest.mark.slow
def test_hive_train_runs_a_swin_hive_and_final_reloads_as_remote_code(tmp_path):
    # A multi-scale encoder through all three stages, then loaded where only the folder's own code exists.
    hive_train(["--recipe", "recipes/tiny-shapes-swin.yaml", "--output-dir", str(tmp_path / "run"), *SMALL])
    final = tmp_path / "run" / "final"
    model = HiveForConditionalGeneration.from_pretrained(final).eval()
    widths = [projector.linear_1.in_features for projector in model.model.multi_modal_projectors]
    assert widths == [32, 64, 128, 128]
    input_ids, pixel_values = torch.tensor([[1, 5, 6, 7]]), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.save({"input_ids": input_ids, "pixel_values": pixel_values, "logits": logits}, tmp_path / "expected.pt")
    result = run_isolated(
        f"""
        import json, torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained({str(final)!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(input_ids=expected["input_ids"], pixel_values=expected["pixel_values"]).logits
        print(json.dumps({{"module": type(model).__module__, "vision": type(model.model.vision_model).__name__,
                          "equal": torch.equal(logits, expected["logits"])}}))
        """,
        str(tmp_path),
    )
    assert result["module"].startswith("transformers_modules.") and result["vision"] == "SwinModel" and result["equal"]


def test_incomplete_checkpoints_are_never_resumed_from(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
        if complete:
            (folder / COMPLETE_MARKER).write_text(f"{step}\n")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists() and (tmp_path / "incomplete-checkpoint-6").exists()


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["--recipe", "recipes/tiny-shapes.yaml", "--stage", "2", "data.shapes.num_train=64", "stage2.max_steps=8",
            "stage2.save_steps=2", "stage2.per_device_train_batch_size=4"]
    hive_train([*args, "--output-dir", str(tmp_path / "straight")])

    killed = tmp_path / "killed"
    rng = random.Random(0)
    for attempt in range(2):  # kill twice at random moments after a checkpoint began
        process = hive_train([*args, "--output-dir", str(killed), *(["--resume"] if attempt else [])], wait=False)
        deadline = time.time() + 300
        while not list((killed / "stage2").glob("checkpoint-*")) and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
    hive_train([*args, "--output-dir", str(killed), "--resume"])

    straight = load_file(tmp_path / "straight" / "stage2" / "model" / "model.safetensors")
    resumed = load_file(killed / "stage2" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_at_the_same_global_batch(tmp_path):
    # SGD, not Adam: Adam's first steps move each weight by about lr * sign(grad), so float noise in a near-zero
    # gradient (closed gates) flips whole steps. Under SGD the update is proportional to the gradient itself.
    common = ["--recipe", "recipes/tiny-shapes.yaml", "--stage", "2", "data.shapes.num_train=64", "stage2.max_steps=3",
              "stage2.train_sampling_strategy=sequential", "stage2.save_strategy='no'", "stage2.logging_steps=1",
              "stage2.optim=sgd", "stage2.learning_rate=0.5", "model.hive.gate_init=0.3"]
    hive_train([*common, "--output-dir", str(tmp_path / "one"), "stage2.per_device_train_batch_size=8"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # accelerate's `--cpu` launcher needs mpirun for several processes; its torchrun launcher (`--multi_gpu`) with the
    # recipe's use_cpu gives DDP over gloo on CPU processes.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hive_vlm.cli", "train", *common,
               "--output-dir", str(tmp_path / "two"), "stage2.per_device_train_batch_size=4"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one" / "stage2" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "stage2" / "model" / "model.safetensors")
    assert one.keys() == two.keys()
    # Tolerance: float32 sums reduced in a different order (two half-batches, then an all-reduce) differ by ~1e-7
    # relative per step; 3 SGD steps at lr 0.5 keep the weights within 1e-5 of each other.
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
    start = load_file(tmp_path / "one" / "backbones" / "text" / "model.safetensors")
    llm = {name.removeprefix("model."): tensor for name, tensor in start.items() if name.startswith("model.")}
    assert len(llm) > 20 and all(torch.equal(two[f"model.language_model.{k}"], v) for k, v in llm.items())  # LLM frozen
    assert "did not find any unused parameters" in result.stderr or "Traceback" not in result.stderr  # DDP ran, cleanly


def test_export_vision_reproduces_the_in_model_encoder(tmp_path):
    processor = processor_for()
    model = tiny_model(processor)
    model.save_pretrained(tmp_path / "hive")
    export_vision(str(tmp_path / "hive"), str(tmp_path / "encoder"))
    assert "auto_map" not in json.loads((tmp_path / "encoder" / "config.json").read_text())
    encoder = AutoModel.from_pretrained(tmp_path / "encoder")  # no trust_remote_code
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exported = encoder(pixel_values, output_hidden_states=True).hidden_states
        inside = model.model.vision_model(pixel_values, output_hidden_states=True).hidden_states
    for a, b in zip(exported, inside):
        torch.testing.assert_close(a, b)


def test_report_to_tensorboard_writes_loss_and_gate_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    processor = processor_for()
    model = tiny_model(processor)
    args = args_for(HiveAlignmentConfig, tmp_path, report_to="tensorboard")
    HiveAlignmentTrainer(model, args, data_collator=HiveCaptionCollator(processor), train_dataset=caption_rows()).train()
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/gate/attn_t1_v1", "train/gate/mlp_t3_v3", "train/trainable/cross_attention"} <= tags, tags


def test_stage0_grows_the_embeddings_for_a_pad_token_the_processor_added(tmp_path):
    # An LLM whose tokenizer has no pad token (GPT-2, Llama 3): the processor adds one, and stage 0 pads with it.
    from transformers import AutoConfig, AutoModelForCausalLM

    from hive_vlm.training.pipeline import HiveRecipeRun

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<eos>", "<unk>", *"what color is the circle ? red blue green a describe image . : user assistant".split()]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    assert tokenizer.pad_token is None
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    values = recipe_values()
    values["model"] = {**values["model"], "text_model": str(tmp_path / "llm")}
    del values["model"]["text_config"]
    values["data"] = {**values["data"], "tokenizer": None, "shapes": {**values["data"]["shapes"], "num_train": 16}}
    values["stage0"] = {"max_steps": 2, "per_device_train_batch_size": 4, "use_cpu": True}
    run = HiveRecipeRun(parse_recipe(values), str(tmp_path / "run"))
    run.run(stages=[0])
    pretrained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "stage0" / "model")
    assert pretrained.get_input_embeddings().num_embeddings == len(run.processor().tokenizer) == len(tokenizer) + 1


@pytest.mark.parametrize("stage,mode", [("2", "gated"), ("2", "shared_softmax"), ("3", "gated")])
def test_stages_2_and_3_train_compiled_in_one_graph_with_the_eager_losses(tmp_path, stage, mode):
    # TrainingArguments(torch_compile=True) compiles the model; aot_eager is dynamo and AOTAutograd (forward and
    # backward graphs) as inductor receives them, without inductor's C++ build.
    processor = processor_for()
    losses, weights = {}, {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = tiny_model(processor, gate_init=0.5, cross_attention_mode=mode)
        compile_args = {"torch_compile": True, "torch_compile_backend": "aot_eager"} if compiled else {}
        if stage == "2":
            args = args_for(HiveAlignmentConfig, tmp_path / str(compiled), train_sampling_strategy="sequential", **compile_args)
            trainer = HiveAlignmentTrainer(model, args, data_collator=HiveCaptionCollator(processor), train_dataset=caption_rows())
        else:
            args = args_for(HiveFinetuneConfig, tmp_path / str(compiled), train_sampling_strategy="sequential", lora_r=4, **compile_args)
            trainer = HiveFinetuneTrainer(model, args, data_collator=HiveChatCollator(processor), train_dataset=chat_rows())
        trainer.train()
        losses[compiled] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        weights[compiled] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        if compiled:
            assert type(trainer.model_wrapped).__name__ == "OptimizedModule"  # it did run compiled
            assert sum(counters["graph_break"].values()) == 0 and counters["stats"]["unique_graphs"] == 1
    assert len(losses[True]) == 4
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-5)
    for name, weight in weights[False].items():
        torch.testing.assert_close(weights[True][name], weight, rtol=1e-4, atol=1e-5, msg=name)
