"""On a small GPU: bitsandbytes 4-bit and 8-bit loading, QLoRA, CPU and disk offloading, the `AutoModel` entry point and
TRL's trainers, each tried on a saved HIVE folder in a process that cannot import this project (as a Hub user would).

bitsandbytes runs on its CPU backend here, whose 4-bit kernels need whole blocks of 64: the backbones are 64 wide.
"""

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from isolated import run_isolated
from PIL import Image
from safetensors.torch import load_file
from transformers import ViTImageProcessorPil

from hive_vlm.cli import main
from hive_vlm.data.tokenizer import build_tokenizer
from hive_vlm.tiny import tiny_hive_config
from hive_vlm.training.recipe import load_recipe
from modeling_hive import HiveForConditionalGeneration
from modeling_hive.processing_hive import HiveProcessor


CORPUS = [
    "a red circle and a blue square .",
    "what colour is the circle ? red",
    "how many shapes are there ? 2",
    "is the triangle striped ? no",
]
WIDTH = 64
QUESTION = "what colour is the circle ?"

# The child's common opening: the folder, its processor, a batch of two chats (one image each, left-padded) and the
# in-memory model's logits and greedy tokens on it, written by the fixture.
PRELUDE = """
import json, torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
FOLDER = {folder!r}
reference = torch.load({reference!r}, weights_only=True)
batch = {{k: reference[k] for k in ("input_ids", "attention_mask", "pixel_values")}}
GREEDY = dict(max_new_tokens=4, do_sample=False, pad_token_id={pad_token_id})
"""


@pytest.fixture(scope="module")
def hive_folder(tmp_path_factory):
    """A saved HIVE folder (ViT + Qwen2, 64 wide, open gates) and what the in-memory model gives on a chat batch."""
    root = tmp_path_factory.mktemp("small_gpu")
    folder = root / "hive"
    processor = HiveProcessor(ViTImageProcessorPil(size={"height": 32, "width": 32}), build_tokenizer(CORPUS))
    processor.tokenizer.padding_side = "left"
    torch.manual_seed(0)
    config = tiny_hive_config(
        "vit",
        "qwen2",  # biased q/k/v projections: the 4-bit layers QLoRA once failed to train on the CPU
        tokenizer=processor.tokenizer,
        vision_kwargs={"hidden_size": WIDTH},
        text_kwargs={"hidden_size": WIDTH},
        gate_init=0.5,
    )
    model = HiveForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    chats = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        for question in (QUESTION, "how many shapes are there ?")
    ]
    text = processor.apply_chat_template(chats, add_generation_prompt=True)
    batch = processor(images=images, text=text, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        image_features = model.model.get_image_features(batch["pixel_values"]).pooler_output
    tokens = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    reference = root / "reference.pt"
    torch.save({**batch, "logits": logits, "image_features": image_features, "tokens": tokens}, reference)
    prelude = PRELUDE.format(folder=str(folder), reference=str(reference), pad_token_id=processor.tokenizer.pad_token_id)
    return {"root": root, "folder": folder, "prelude": prelude, "images": images, "model": model}


def run(hive_folder, *pieces: str, timeout: int = 300) -> dict:
    """Runs the prelude, then `pieces` (each dedented on its own), in an isolated process; returns its last JSON line."""
    code = "\n".join(textwrap.dedent(piece) for piece in (hive_folder["prelude"], *pieces))
    return run_isolated(code, str(hive_folder["root"]), timeout=timeout)


# ----------------------------------------------------------------------------------------------- the AutoModel entry


def test_automodel_gives_the_generating_class_and_hivemodel_stays_reachable(hive_folder):
    result = run(
        hive_folder,
        """
        model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**batch).logits
        tokens = model.generate(**batch, **GREEDY)
        print(json.dumps({
            "cls": type(model).__name__, "module": type(model).__module__, "base": type(model.model).__name__,
            "logits": torch.equal(logits, reference["logits"]), "tokens": torch.equal(tokens, reference["tokens"]),
        }))
        """,
    )
    assert result["cls"] == "HiveForConditionalGeneration" and result["module"].startswith("transformers_modules")
    assert result["base"] == "HiveModel"
    assert result["logits"] and result["tokens"]


# ------------------------------------------------------------------------------------------------------- offloading


def test_offloading_to_cpu_and_disk_gives_the_in_memory_logits_and_tokens(hive_folder):
    """`device_map="auto"` with a CPU budget too small for the model (the rest goes to disk), then a map that splits the
    LLM's layers, and the cross-attention blocks, between "cpu" and "disk"; then a folder saved before HIVE recorded how
    its LLM makes logits (`logits_by_causal_lm`, the offload KeyError of issue 28)."""
    old = hive_folder["root"] / "hive-without-logits-field"
    if not old.exists():
        shutil.copytree(hive_folder["folder"], old)
        config = json.loads((old / "config.json").read_text())
        del config["logits_by_causal_lm"]
        (old / "config.json").write_text(json.dumps(config))
    result = run(
        hive_folder,
        f"""
        import tempfile

        def check(folder, **kwargs):
            model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, offload_folder=tempfile.mkdtemp(), **kwargs).eval()
            with torch.no_grad():
                logits = model(**batch).logits
            tokens = model.generate(**batch, **GREEDY)
            classes = {{type(module).__name__ for module in model.modules()}}
            return {{
                "devices": sorted(set(model.hf_device_map.values())),
                "logits": (logits - reference["logits"]).abs().max().item(),
                "tokens": torch.equal(tokens, reference["tokens"]),
                "no_split_missing": sorted(set(model._no_split_modules) - classes),
                "no_split": sorted(model._no_split_modules),
            }}

        auto = check(FOLDER, device_map="auto", max_memory={{"cpu": "300KB"}})
        layers = {{f"model.language_model.layers.{{i}}": "cpu" if i % 2 == 0 else "disk" for i in range(4)}}
        split = {{
            "model.vision_model": "cpu", "model.multi_modal_projectors": "cpu",
            "model.cross_attention_layers.0": "disk", "model.cross_attention_layers.1": "cpu",
            "model.language_model.embed_tokens": "cpu", "model.language_model.norm": "disk",
            "model.language_model.rotary_emb": "cpu", "lm_head": "disk", **layers,
        }}
        by_hand = check(FOLDER, device_map=split)
        old = check({str(old)!r}, device_map=split)
        print(json.dumps({{"auto": auto, "split": by_hand, "old": old}}))
        """,
    )
    for name in ("auto", "split", "old"):
        assert result[name]["devices"] == ["cpu", "disk"], (name, result[name])
        assert result[name]["logits"] == 0.0 and result[name]["tokens"], (name, result[name])
        assert not result[name]["no_split_missing"], (name, result[name])
    assert {"HiveCrossAttentionLayer", "Qwen2DecoderLayer", "ViTLayer"} <= set(result["auto"]["no_split"])


# ------------------------------------------------------------------------------------------- bitsandbytes, QLoRA

QUANTIZED = """
import bitsandbytes
from transformers import BitsAndBytesConfig

QUANTIZED_LAYERS = (bitsandbytes.nn.Linear4bit, bitsandbytes.nn.Linear8bitLt)  # not peft's LoRA wrappers of the same names

def quantized_classes(model):
    '''Which top-level parts of HIVE hold bitsandbytes layers, and how many.'''
    parts = {}
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED_LAYERS):
            name = name.removeprefix("base_model.model.")
            part = name.split(".")[1] if name.startswith("model.") else name
            parts[part] = parts.get(part, 0) + 1
    return parts
"""


def test_bitsandbytes_4bit_and_8bit_quantize_only_the_llm_and_stay_close(hive_folder):
    pytest.importorskip("bitsandbytes", reason="the `quantization` extra: pip install 'hive-vlm[quantization]'")
    result = run(
        hive_folder,
        QUANTIZED,
        """
        settings = {
            "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
            "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
            "int8": BitsAndBytesConfig(load_in_8bit=True),
        }
        expected = reference["logits"]

        def unpadded(i):
            start = int(batch["attention_mask"][i].eq(0).sum())  # left padding
            return {"input_ids": batch["input_ids"][i : i + 1, start:], "attention_mask": batch["attention_mask"][i : i + 1, start:],
                    "pixel_values": batch["pixel_values"][i : i + 1]}

        results = {}
        for name, quantization_config in settings.items():
            model = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=True, quantization_config=quantization_config)
            with torch.no_grad():
                logits = model(**batch).logits
                image_features = model.model.get_image_features(batch["pixel_values"]).pooler_output
            tokens = model.generate(**batch, **GREEDY)
            singles = [model.generate(**unpadded(i), **GREEDY)[0] for i in range(2)]
            results[name] = {
                "parts": quantized_classes(model),
                "finite": bool(torch.isfinite(logits).all()),
                "relative_error": ((logits - expected).norm() / expected.norm()).item(),
                "image_features_unchanged": torch.equal(image_features, reference["image_features"]),
                "batched_equals_single": all(
                    torch.equal(tokens[i, -4:], single[-4:]) for i, single in enumerate(singles)
                ),
                "generated": tokens.shape[1] - batch["input_ids"].shape[1],
            }
        print(json.dumps(results))
        """,
    )
    num_linear = 4 * 7  # per Qwen2 layer: q, k, v, o, gate, up, down
    for name, outcome in result.items():
        assert outcome["parts"] == {"language_model": num_linear}, (name, outcome)  # vision, projectors, blocks, head: not
        assert outcome["finite"] and outcome["generated"] == 4, (name, outcome)
        assert outcome["batched_equals_single"], (name, outcome)
        assert outcome["image_features_unchanged"], (name, outcome)  # the encoder and projectors run as before
    # Relative to the float32 logits' norm. Measured on 64-wide random backbones (far from the weight statistics 4-bit
    # formats are made for): int8 about 0.01, nf4 0.15-0.21, fp4 0.19-0.29.
    assert result["int8"]["relative_error"] < 0.05, result
    assert result["nf4"]["relative_error"] < 0.4 and result["fp4"]["relative_error"] < 0.4, result


def test_qlora_trains_lora_and_hive_weights_and_its_adapter_reloads(hive_folder):
    """peft's QLoRA recipe on a 4-bit HIVE: LoRA on the LLM's projections, HIVE's blocks and projectors through
    `modules_to_save`."""
    pytest.importorskip("bitsandbytes", reason="the `quantization` extra: pip install 'hive-vlm[quantization]'")
    result = run(
        hive_folder,
        QUANTIZED,
        """
        import tempfile
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

        quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=True, quantization_config=quantization_config)
        model = prepare_model_for_kbit_training(model)
        hive_modules = [f"{name}.{i}" for name in ("cross_attention_layers", "multi_modal_projectors") for i in range(2)]
        lora = LoraConfig(
            r=8, lora_alpha=16,
            target_modules=r".*\\.language_model\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
            modules_to_save=hive_modules,
        )
        model = get_peft_model(model, lora)
        trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        four_bit = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)}
        optimizer = torch.optim.AdamW(list(p for p in model.parameters() if p.requires_grad), lr=1e-2)
        model.train()
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        losses = []
        for _ in range(4):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        parameters = dict(model.named_parameters())
        unchanged = [n for n, before in trainable.items() if torch.equal(parameters[n], before)]
        modules = dict(model.named_modules())
        four_bit_changed = [n for n, before in four_bit.items() if not torch.equal(modules[n].weight, before)]
        adapter = tempfile.mkdtemp()
        model.save_pretrained(adapter)
        model.eval()
        with torch.no_grad():
            trained = model(**batch).logits
        base = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=True, quantization_config=quantization_config)
        reloaded = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            again = reloaded(**batch).logits
        print(json.dumps({
            "losses": losses, "num_trainable": len(trainable), "unchanged": unchanged, "four_bit": len(four_bit),
            "four_bit_changed": four_bit_changed,
            "lora": sum(".lora_" in n for n in trainable), "hive": sum(".modules_to_save." in n for n in trainable),
            "reload_difference": (trained - again).abs().max().item(), "parts": quantized_classes(reloaded),
        }))
        """,
    )
    assert result["losses"][-1] < result["losses"][0], result["losses"]
    assert result["lora"] > 0 and result["hive"] > 0, result
    assert result["unchanged"] == [], result["unchanged"]  # every LoRA and HIVE weight trained
    assert result["four_bit"] == 28 and result["four_bit_changed"] == [], result
    assert result["parts"] == {"language_model": 28}
    assert result["reload_difference"] < 1e-5, result


# ------------------------------------------------------------------------------------------------------------- TRL

TRL_DATA = """
import numpy as np
from datasets import Dataset
from PIL import Image

rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)) for _ in range(4)]
question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle ?"}]}]

def answer(text):
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

def changed(trainer, before):
    parameters = dict(trainer.model.named_parameters())
    return sum(not torch.equal(parameters[n], p) for n, p in before.items())

def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

COMMON = dict(per_device_train_batch_size=2, learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no",
              logging_steps=1, trust_remote_code=True, seed=0)
"""


def test_trl_sft_and_dpo_train_a_hive_folder(hive_folder):
    """SFT in TRL's vision-language mode (`messages` + `images`) and DPO on image preference pairs, from the folder path."""
    pytest.importorskip("trl", reason="the `trl` extra: pip install 'hive-vlm[trl]'")
    result = run(
        hive_folder,
        TRL_DATA,
        """
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

        chats = Dataset.from_dict({"messages": [question + answer("red")] * 4, "images": [[image] for image in images]})
        sft = SFTTrainer(model=FOLDER, args=SFTConfig("sft", max_steps=3, max_length=None, **COMMON), train_dataset=chats)
        before = trainable(sft)
        sft.train()
        sft_losses = [log["loss"] for log in sft.state.log_history if "loss" in log]
        sft_result = {"cls": type(sft.model).__name__, "trainable": len(before), "changed": changed(sft, before), "losses": sft_losses}

        pairs = Dataset.from_dict({
            "prompt": [question] * 4, "chosen": [answer("red")] * 4, "rejected": [answer("blue")] * 4,
            "images": [[image] for image in images],
        })
        dpo = DPOTrainer(model=FOLDER, args=DPOConfig("dpo", max_steps=3, **COMMON), train_dataset=pairs)
        before = trainable(dpo)
        dpo.train()
        dpo_losses = [log["loss"] for log in dpo.state.log_history if "loss" in log]
        dpo_result = {"trainable": len(before), "changed": changed(dpo, before), "losses": dpo_losses}
        print(json.dumps({"sft": sft_result, "dpo": dpo_result}))
        """,
        timeout=400,
    )
    sft, dpo = result["sft"], result["dpo"]
    assert sft["cls"] == "HiveForConditionalGeneration"
    assert sft["trainable"] > 0 and sft["changed"] == sft["trainable"], sft
    assert sft["losses"][-1] < sft["losses"][0], sft
    assert dpo["trainable"] > 0 and dpo["changed"] == dpo["trainable"], dpo
    assert abs(dpo["losses"][0] - 0.6931) < 1e-3 and dpo["losses"][-1] < dpo["losses"][0], dpo  # log 2 at the start


def test_trl_grpo_trains_with_a_reward_after_naming_a_token_to_suppress(hive_folder):
    """TRL's GRPOTrainer keeps a VLM from sampling its image token and reads it from `config.image_token_id`. HIVE has
    none (images enter through cross-attention), so from a folder path the trainer stops at once with HiveConfig's
    reason and fix; a model whose config names a token it must never generate (here the pad token) trains."""
    pytest.importorskip("trl", reason="the `trl` extra: pip install 'hive-vlm[trl]'")
    result = run(
        hive_folder,
        TRL_DATA,
        """
        from trl import GRPOConfig, GRPOTrainer

        prompts = Dataset.from_dict({"prompt": [question] * 4, "image": images})

        def length(completions, **kwargs):  # varies between a prompt's completions, so advantages are not all 0
            return [float(len(completion[0]["content"])) for completion in completions]

        args = GRPOConfig("grpo", max_steps=2, num_generations=2, max_completion_length=4, temperature=1.5, **COMMON)
        try:
            GRPOTrainer(model=FOLDER, reward_funcs=length, args=args, train_dataset=prompts)
            error = None
        except AttributeError as failure:
            error = str(failure)

        model = AutoModelForImageTextToText.from_pretrained(FOLDER, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(FOLDER, trust_remote_code=True)
        model.config.image_token_id = processor.tokenizer.pad_token_id
        grpo = GRPOTrainer(model=model, processing_class=processor, reward_funcs=length, args=args, train_dataset=prompts)
        before = trainable(grpo)
        grpo.train()
        logs = [log for log in grpo.state.log_history if "reward" in log]
        print(json.dumps({"error": error, "steps": len(logs), "trainable": len(before), "changed": changed(grpo, before),
                          "completion_length": logs[0]["completions/mean_length"]}))
        """,
    )
    assert result["error"] is not None and "HIVE puts no image token in the text" in result["error"], result
    assert result["steps"] == 2 and result["completion_length"] > 0, result
    assert result["changed"] > 0, result


# ------------------------------------------------------------------------------------------- `hive train`, QLoRA

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("quantization", "message"),
    [
        ({"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"}, "quantization: unknown key(s) ['bnb_4bit_quant_typ']"),
        ({"bnb_4bit_quant_type": "nf4"}, "quantization needs load_in_4bit: true"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}, "bnb_4bit_quant_type must be nf4 or fp4, got 'nf5'"),
        ("4bit", "quantization must be a mapping"),
    ],
)
def test_a_bad_stage3_quantization_is_refused_at_load_naming_it(quantization, message):
    recipe = load_recipe(REPO / "recipes" / "tiny-shapes.yaml")
    recipe.stage3["quantization"] = quantization
    with pytest.raises(ValueError) as error:
        recipe.stage_arguments(3, "out")
    assert message in str(error.value)
    recipe.stage3.update(quantization={"load_in_4bit": True}, lora_r=0)
    with pytest.raises(ValueError, match="quantization needs lora_r > 0"):
        recipe.stage_arguments(3, "out")


def test_stage3_quantization_without_bitsandbytes_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "bitsandbytes" else find_spec(name, *args))
    with pytest.raises(ValueError, match=r"stage3: quantization needs bitsandbytes: pip install 'hive-vlm\[quantization\]'"):
        load_recipe(REPO / "recipes" / "tiny-shapes.yaml", ["stage3.quantization={load_in_4bit: true}"])


def test_hive_train_stage3_with_quantization_trains_qlora_and_merges_into_the_unquantized_llm(tmp_path):
    pytest.importorskip("bitsandbytes", reason="the `quantization` extra: pip install 'hive-vlm[quantization]'")
    run = tmp_path / "run"
    common = ["--recipe", str(REPO / "recipes" / "tiny-shapes.yaml"), "--output-dir", str(run), "data.shapes.num_train=32",
              "stage2.max_steps=2", "stage2.save_steps=10", "stage3.max_steps=3", "stage3.save_steps=2"]  # fmt: skip
    assert main(["train", "--stage", "2", *common]) == 0
    quantization = "stage3.quantization={load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: float32}"
    assert main(["train", "--stage", "3", *common, quantization]) == 0

    stage2 = load_file(run / "stage2" / "model" / "model.safetensors")
    base = load_file(run / "stage3" / "base" / "model.safetensors")
    merged = load_file(run / "stage3" / "model" / "model.safetensors")
    assert set(base) == set(stage2) == set(merged)  # plain, unquantized folders: no 4-bit state in them
    for folder in ("base", "model"):
        assert "quantization_config" not in json.loads((run / "stage3" / folder / "config.json").read_text())
    llm = [name for name in stage2 if name.startswith("model.language_model.")]
    assert all(torch.equal(base[name], stage2[name]) for name in llm)  # the adapter's base: stage 2's LLM, unrounded
    query = "model.language_model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(merged[query], stage2[query])  # the trained LoRA, merged
    block = "model.cross_attention_layers.0.cross_attn.q_proj.weight"
    assert not torch.equal(base[block], stage2[block]) and torch.equal(merged[block], base[block])  # HIVE trained in 4-bit
    adapter = load_file(run / "stage3" / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".language_model." in name and ".lora_" in name for name in adapter)

    # A checkpoint holds what trains (LoRA, encoder, projectors, blocks), not the frozen 4-bit weights, which Trainer
    # could not load back into quantized layers: a killed QLoRA stage resumes.
    checkpoint = load_file(run / "stage3" / "checkpoint-2" / "model.safetensors")
    assert any(".lora_A." in name for name in checkpoint) and block in checkpoint
    assert not any(".base_layer." in name for name in checkpoint)
    for name in ("model", "base", "adapter", "checkpoint-3"):
        shutil.rmtree(run / "stage3" / name)
    assert main(["train", "--stage", "3", "--resume", *common, quantization]) == 0
    resumed = load_file(run / "stage3" / "model" / "model.safetensors")
    assert not torch.equal(resumed[block], stage2[block]) and not torch.equal(resumed[query], stage2[query])
