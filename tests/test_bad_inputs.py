"""Bad input wherever a user hands it over: config, model forward and generate, processor, pipeline, data loaders,
collators, checkpoints, evaluation, recipes and the `hive` command. Every case raises one clear exception, of a
stated type, whose message names the offending field, file or row; none crashes inside torch or transformers."""

import copy
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub.errors import StrictDataclassFieldValidationError
from PIL import Image
from transformers import BertConfig, LlamaForCausalLM, ViTModel

from eval_fixtures import write_shapes
from hive_vlm.cli import main as hive
from hive_vlm.data import loaders
from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator, HiveMaskedImageCollator
from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
from hive_vlm.eval.runner import evaluate_benchmark
from hive_vlm.tiny import tiny_hive_config, tiny_text_config, tiny_vision_config
from hive_vlm.data.tokenizer import build_tokenizer
from hive_vlm.training.pipeline import HiveRecipeRun
from hive_vlm.training.recipe import load_recipe, parse_recipe
from modeling_hive import HiveConfig, HiveForConditionalGeneration
from modeling_hive.pipeline_hive import HiveVisualQuestionAnsweringPipeline


REPO = Path(__file__).resolve().parents[1]
CORPUS = ["a red circle and a blue square .", "what colour is the circle ? red", "describe the image ."]
CHAT = [{"role": "user", "content": "what colour is the circle ?"}, {"role": "assistant", "content": "red"}]


@pytest.fixture(scope="module")
def corpus():
    return CORPUS


@pytest.fixture(scope="module")
def ctx(processor, model, tmp_path_factory):
    """Tiny processor, model, saved folders and data files the cases spoil one thing at a time."""
    root = tmp_path_factory.mktemp("bad_inputs")
    tokenizer = processor.tokenizer
    model.save_pretrained(root / "hive")
    processor.save_pretrained(root / "hive")
    model.save_pretrained(root / "sharded", max_shard_size="100KB")
    LlamaForCausalLM(tiny_text_config("llama")).save_pretrained(root / "llama")
    ViTModel(tiny_vision_config("vit")).save_pretrained(root / "vit")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "red.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "eval").mkdir()
    (root / "weightless").mkdir()
    (root / "weightless" / "config.json").write_text((root / "hive" / "config.json").read_text())
    (root / "files").mkdir()
    (root / "files" / "broken.yaml").write_text("name: [unclosed\nseed: 0\n")
    return SimpleNamespace(root=root, processor=processor, tokenizer=tokenizer, model=model, shapes=write_shapes(root),
                           pipe=HiveVisualQuestionAnsweringPipeline(model=model, processor=processor))  # fmt: skip


def batch(ctx, **changes):
    """A valid (2-sample) model batch, with `changes` applied: a value, or a function of the valid value."""
    encoded = ctx.tokenizer(["a red circle", "what colour is the square ?"], padding=True, return_tensors="pt")
    values = dict(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                  pixel_values=torch.rand(2, 3, 32, 32), labels=encoded["input_ids"].clone())  # fmt: skip
    for name, change in changes.items():
        values[name] = change(values[name]) if callable(change) else change
    return {name: value for name, value in values.items() if value is not None}


def forward(**changes):
    return lambda ctx: ctx.model(**batch(ctx, **changes))


def generate(**changes):
    return lambda ctx: ctx.model.generate(**{**batch(ctx, labels=None, **changes), "max_new_tokens": 2})


def config(**kwargs):
    return lambda ctx: tiny_hive_config("vit", "llama", **kwargs)


def process(**kwargs):
    return lambda ctx: ctx.processor(**{"text": "a red circle", **kwargs})


def rgb(size=16):
    return Image.new("RGB", (size, size), (10, 200, 10))


def caption(examples, **kwargs):
    return lambda ctx: HiveCaptionCollator(ctx.processor, **kwargs)(examples)


def chat(examples, **kwargs):
    return lambda ctx: HiveChatCollator(ctx.processor, **kwargs)(examples)


def masked(examples, **kwargs):
    return lambda ctx: HiveMaskedImageCollator(ctx.processor, **{"patch_size": 8, **kwargs})(examples)


def write(ctx, name: str, text: str) -> Path:
    path = ctx.root / "files" / name
    path.write_text(text)
    return path


def llava(rows, name="chats.json"):
    return lambda ctx: loaders.load_conversations(write(ctx, name, json.dumps(rows)), image_root=str(ctx.root))


def turns(*pairs):
    return [{"from": speaker, "value": text} for speaker, text in pairs]


def copy_folder(ctx, source: str, name: str) -> Path:
    target = ctx.root / "copies" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(ctx.root / source, target)
    return target


def load_hive(folder_of, **kwargs):
    return lambda ctx: HiveForConditionalGeneration.from_pretrained(folder_of(ctx), **kwargs)


def missing_shard(ctx):
    folder = copy_folder(ctx, "sharded", "missing-shard")
    sorted(folder.glob("model-*.safetensors"))[1].unlink()
    return folder


def truncated_weights(ctx):
    folder = copy_folder(ctx, "hive", "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def pickle_only(ctx):
    folder = copy_folder(ctx, "hive", "pickle-only")
    (folder / "model.safetensors").unlink()
    torch.save(ctx.model.state_dict(), folder / "pytorch_model.bin")
    return folder


def config_edit(name, edit):
    def folder_of(ctx):
        folder = copy_folder(ctx, "hive", name)
        values = json.loads((folder / "config.json").read_text())
        edit(values)
        (folder / "config.json").write_text(json.dumps(values))
        return folder

    return folder_of


def recipe(edit):
    values = yaml.safe_load((REPO / "recipes" / "tiny-shapes.yaml").read_text())
    edit(values)
    return lambda ctx: parse_recipe(copy.deepcopy(values))


def recipe_data_run(ctx):
    parsed = load_recipe(REPO / "recipes" / "tiny-shapes.yaml",
                         [f"data.stage2.source={ctx.root / 'no-such-shards'}/*.tar", "data.stage2.format=webdataset"])  # fmt: skip
    return HiveRecipeRun(parsed, output_dir=str(ctx.root / "run")).check_data([1, 2, 3])


def shapes_eval(name, predict=None, sidecar=None, **kwargs):
    def run(ctx):
        out = ctx.root / "eval" / f"{name}.json"
        if sidecar is not None:
            (out.parent / f"{out.name}.predictions.jsonl").write_text(sidecar)
        answer = predict or (lambda images, prompts: ["red"] * len(prompts))
        return evaluate_benchmark(HiveShapesBenchmark(), ctx.shapes, answer, out, progress=False, **kwargs)

    return run


def unparsable_config(ctx):
    folder = copy_folder(ctx, "hive", "bad-json")
    (folder / "config.json").write_text("{not json")
    return folder


def no_pad_token(ctx):
    tokenizer = build_tokenizer(CORPUS)
    tokenizer.pad_token = None
    collate = HiveCaptionCollator(SimpleNamespace(image_processor=ctx.processor.image_processor, tokenizer=tokenizer))
    return collate([{"image": None, "text": "a"}, {"image": None, "text": "a red circle"}])


def encoder_as_text_model(ctx):
    bert = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    config = HiveConfig(vision_config=tiny_vision_config("vit").to_dict(), text_config=bert.to_dict(), cross_attention_layers=[[1, 1]])
    return HiveForConditionalGeneration(config)


def path_of(ctx, *parts):
    return re.escape(str(ctx.root.joinpath(*parts)))


# Each case: (action on ctx, exception type, pattern the message must match; a callable pattern gets ctx).
CASES = {
    # --- config --------------------------------------------------------------------------------------------
    "config-vision-layer-out-of-range": (
        config(cross_attention_layers=[[4, 1]]),
        ValueError,
        r"cross_attention_layers: vision layer 4 is out of range",
    ),
    "config-text-layer-out-of-range": (
        config(cross_attention_layers=[[1, 7]]),
        ValueError,
        r"cross_attention_layers: text layer 7 is out of range",
    ),
    "config-text-layer-twice": (
        config(cross_attention_layers=[[1, 2], [3, 2]]),
        ValueError,
        r"cross_attention_layers: text layer\(s\) \[2\] used more than once",
    ),
    "config-pair-of-three": (
        config(cross_attention_layers=[[1, 1, 1]]),
        ValueError,
        r"cross_attention_layers entries must be \[vision_layer, text_layer\]",
    ),
    "config-no-pairs": (
        config(cross_attention_layers=[]),
        ValueError,
        r"cross_attention_layers must hold at least one",
    ),
    "config-hierarchy-mode": (config(hierarchy_mode="flat"), ValueError, r"hierarchy_mode must be one of"),
    "config-shared-softmax-norm-in-gated-mode": (config(shared_softmax_norm="queries_and_keys"), ValueError, r"applies to cross_attention_mode='shared_softmax' only"),
    "config-heads-do-not-divide-width": (
        config(cross_attention_num_heads=3),
        ValueError,
        r"cross_attention_num_heads \(3\) must divide the LLM width \(32\)",
    ),
    "config-kv-heads-do-not-divide-heads": (
        config(cross_attention_num_heads=2, cross_attention_num_key_value_heads=3),
        ValueError,
        r"cross_attention_num_key_value_heads \(3\) must divide",
    ),
    "config-dropout-one": (
        config(cross_attention_dropout=1.0),
        ValueError,
        r"cross_attention_dropout must be in \[0, 1\)",
    ),
    "config-zero-spread-pairs": (
        config(cross_attention_layers=None, num_cross_attention_layers=0),
        ValueError,
        r"num_cross_attention_layers must be between 1",
    ),
    "config-gate-init-wrong-type": (
        config(gate_init="open"),
        StrictDataclassFieldValidationError,
        r"field 'gate_init'",
    ),
    "config-sub-config-without-model-type": (
        lambda ctx: HiveConfig(vision_config={"hidden_size": 32}, text_config=tiny_text_config("llama").to_dict()),
        ValueError,
        r"vision_config is a dict without a model_type",
    ),
    "config-unknown-text-model-type": (
        lambda ctx: HiveConfig(vision_config=tiny_vision_config("vit").to_dict(), text_config={"model_type": "no-such-llm"}),
        ValueError,
        r"Unrecognized model type for subconfig: no-such-llm",
    ),
    "config-text-model-not-a-decoder": (
        encoder_as_text_model,
        ValueError,
        r"BertModel has no single ModuleList of its 4 decoder layers",
    ),
    # --- model forward -------------------------------------------------------------------------------------
    "forward-wrong-channel-count": (
        forward(pixel_values=lambda p: p[:, :1]),
        ValueError,
        r"pixel_values must have shape \(batch, 3, height, width\), got \(2, 1, 32, 32\)",
    ),
    "forward-pixel-values-without-batch-axis": (
        forward(pixel_values=lambda p: p[0]),
        ValueError,
        r"pixel_values must have shape .* got \(3, 32, 32\)",
    ),
    "forward-mismatched-batch-sizes": (
        forward(pixel_values=lambda p: p[:1]),
        ValueError,
        r"pixel_values has 1 images but the text batch has 2 samples",
    ),
    "forward-nan-pixel": (
        forward(pixel_values=lambda p: p.index_fill(3, torch.tensor([5]), float("nan"))),
        ValueError,
        r"pixel_values contains NaN or inf",
    ),
    "forward-inf-pixel": (
        forward(pixel_values=lambda p: p * float("inf")),
        ValueError,
        r"pixel_values contains NaN or inf",
    ),
    "forward-uint8-pixels": (
        forward(pixel_values=lambda p: (p * 255).to(torch.uint8)),
        TypeError,
        r"pixel_values must be floating point.* got dtype torch.uint8",
    ),
    "forward-numpy-pixels": (
        forward(pixel_values=lambda p: p.numpy()),
        TypeError,
        r"pixel_values must be a torch.Tensor .* got ndarray",
    ),
    "forward-wrong-image-size": (
        forward(pixel_values=torch.rand(2, 3, 64, 64)),
        ValueError,
        r"Input image size \(64\*64\) doesn't match model \(32\*32\)",
    ),
    "forward-token-out-of-vocabulary": (
        forward(input_ids=lambda ids: ids + 1000),
        ValueError,
        r"input_ids holds ids outside the vocabulary \[0, \d+\)",
    ),
    "forward-negative-token": (
        forward(input_ids=lambda ids: ids - 100),
        ValueError,
        r"input_ids holds ids outside the vocabulary .* min -\d+",
    ),
    "forward-float-token-ids": (
        forward(input_ids=lambda ids: ids.float()),
        TypeError,
        r"input_ids must hold integer token ids, got dtype torch.float32",
    ),
    "forward-flat-input-ids": (
        forward(input_ids=lambda ids: ids[0], attention_mask=None, labels=None, pixel_values=None),
        ValueError,
        r"input_ids must have shape \(batch, sequence_length\)",
    ),
    "forward-empty-batch": (
        forward(input_ids=lambda ids: ids[:0], attention_mask=lambda m: m[:0], labels=None, pixel_values=lambda p: p[:0]),
        ValueError,
        r"input_ids is empty \(shape \(0, \d+\)\)",
    ),
    "forward-empty-sequence": (
        forward(input_ids=lambda ids: ids[:, :0], attention_mask=None, labels=None),
        ValueError,
        r"input_ids is empty \(shape \(2, 0\)\)",
    ),
    "forward-no-text": (
        forward(input_ids=None, attention_mask=None, labels=None),
        ValueError,
        r"Pass exactly one of input_ids or inputs_embeds",
    ),
    "forward-inputs-embeds-wrong-width": (
        lambda ctx: ctx.model(inputs_embeds=torch.rand(2, 5, 7)),
        ValueError,
        r"inputs_embeds must have shape \(batch, sequence_length, 32\), got \(2, 5, 7\)",
    ),
    "forward-attention-mask-batch": (
        forward(attention_mask=lambda m: m[:1]),
        ValueError,
        r"attention_mask has batch size 1 but input has 2",
    ),
    "forward-attention-mask-length": (
        forward(attention_mask=lambda m: m[:, :3]),
        ValueError,
        r"attention_mask covers 3 positions but the input has \d+ tokens",
    ),
    "forward-image-mask-shape": (
        forward(image_mask=torch.tensor([True])),
        ValueError,
        r"image_mask must have shape \(2,\)",
    ),
    "forward-image-mask-values": (
        forward(image_mask=torch.tensor([0.5, 0.2])),
        ValueError,
        r"image_mask must hold True/False",
    ),
    "forward-labels-shape": (
        forward(labels=lambda y: y[:, :3]),
        ValueError,
        r"labels must have the shape of input_ids",
    ),
    "forward-labels-out-of-vocabulary": (
        forward(labels=lambda y: y + 1000),
        ValueError,
        r"labels holds ids outside the vocabulary \[0, \d+\) that are not -100",
    ),
    "forward-float-labels": (forward(labels=lambda y: y.float()), TypeError, r"labels must hold integer token ids"),
    # --- generate ------------------------------------------------------------------------------------------
    "generate-token-out-of-vocabulary": (
        generate(input_ids=lambda ids: ids + 1000),
        ValueError,
        r"input_ids holds ids outside the vocabulary",
    ),
    "generate-nan-pixel": (
        generate(pixel_values=lambda p: p * float("nan")),
        ValueError,
        r"pixel_values contains NaN or inf",
    ),
    "generate-mismatched-batch-sizes": (
        generate(pixel_values=lambda p: p[:1]),
        ValueError,
        r"pixel_values has 1 images but the text batch has 2 samples",
    ),
    "generate-wrong-channel-count": (
        generate(pixel_values=lambda p: p[:, :2]),
        ValueError,
        r"pixel_values must have shape \(batch, 3, height, width\)",
    ),
    "generate-image-mask-shape": (
        generate(image_mask=torch.tensor([True, False, True])),
        ValueError,
        r"image_mask must have shape \(2,\)",
    ),
    "generate-empty-batch": (
        generate(input_ids=lambda ids: ids[:0], attention_mask=lambda m: m[:0], pixel_values=lambda p: p[:0]),
        ValueError,
        r"input_ids is empty",
    ),
    "generate-misspelled-argument": (
        generate(pixel_values=None, pixel_valuez=torch.rand(2, 3, 32, 32)),
        ValueError,
        r"\['pixel_valuez'\]",
    ),
    # --- processor -----------------------------------------------------------------------------------------
    "processor-two-channel-image": (
        process(images=np.zeros((8, 8, 2), np.uint8)),
        ValueError,
        r"images\[0\]: cannot find the channel axis of shape \(8, 8, 2\)",
    ),
    "processor-batch-as-one-array": (
        process(images=np.zeros((2, 3, 8, 8), np.float32)),
        ValueError,
        r"images\[0\]: expected one image .* Pass a batch as a list",
    ),
    "processor-nan-image": (
        process(images=np.full((8, 8, 3), np.nan, np.float32)),
        ValueError,
        r"images\[0\]: the image holds NaN or infinite values",
    ),
    "processor-float-out-of-range": (
        process(images=np.full((8, 8, 3), 300.0, np.float32)),
        ValueError,
        r"images\[0\]: float image values must lie in \[0, 1\] or \[0, 255\]",
    ),
    "processor-negative-integers": (
        process(images=-np.ones((8, 8, 3), np.int32)),
        ValueError,
        r"images\[0\]: integer image values must not be negative",
    ),
    "processor-complex-array": (
        process(images=np.zeros((8, 8, 3), np.complex64)),
        TypeError,
        r"images\[0\]: unsupported image array dtype complex64",
    ),
    "processor-empty-image": (
        process(images=Image.new("RGB", (0, 5))),
        ValueError,
        r"images\[0\]: the image is empty \(0x5\)",
    ),
    "processor-missing-file": (
        lambda ctx: ctx.processor(images=str(ctx.root / "absent.png"), text="a"),
        ValueError,
        lambda ctx: r"images\[0\]: image file not found: '" + path_of(ctx, "absent.png"),
    ),
    "processor-corrupt-file": (
        lambda ctx: ctx.processor(images=str(ctx.root / "broken.png"), text="a"),
        ValueError,
        lambda ctx: r"images\[0\]: cannot read image file '" + path_of(ctx, "broken.png"),
    ),
    "processor-unsupported-type": (
        process(images={"path": "a.png"}),
        TypeError,
        r"images\[0\]: unsupported image type dict",
    ),
    "processor-more-images-than-texts": (
        process(images=[rgb(), rgb(), rgb()], text=["a", "b"]),
        ValueError,
        r"more images \(3\) than texts \(2\)",
    ),
    "processor-fewer-images-than-texts": (
        process(images=[rgb()], text=["a", "b"]),
        ValueError,
        r"Got 1 images for 2 texts",
    ),
    "processor-two-images-for-one-sample": (
        process(images=[rgb(), [rgb(), rgb()]], text=["a", "b"]),
        ValueError,
        r"Sample 1 has 2 images",
    ),
    "processor-text-not-a-string": (
        process(text=7),
        TypeError,
        r"`text` must be a string or a list of strings, got int",
    ),
    "processor-empty-text-list": (process(text=[]), ValueError, r"`text` is an empty list"),
    "processor-nothing": (lambda ctx: ctx.processor(), ValueError, r"needs `text`, `images` or both"),
    "processor-chat-image-block-without-image": (
        lambda ctx: ctx.processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}]}], tokenize=True),
        ValueError,
        r"message 0 has an image block but no image",
    ),
    # --- pipeline ------------------------------------------------------------------------------------------
    "pipeline-no-question": (lambda ctx: ctx.pipe(image=rgb()), ValueError, r"Input 0 has no question"),
    "pipeline-question-not-text": (
        lambda ctx: ctx.pipe(image=rgb(), question=3),
        TypeError,
        r"Input 0: the question must be a string, got int",
    ),
    "pipeline-empty-image-list": (lambda ctx: ctx.pipe(image=[], question="a"), ValueError, r"empty list of images"),
    "pipeline-image-question-count": (
        lambda ctx: ctx.pipe(image=[rgb()] * 3, question=["a", "b"]),
        ValueError,
        r"3 images and 2 questions",
    ),
    "pipeline-missing-image-of-second-input": (
        lambda ctx: ctx.pipe(image=[rgb(), None], question="a"),
        ValueError,
        r"Input 1 has no image",
    ),
    "pipeline-misspelled-argument": (
        lambda ctx: ctx.pipe(image=rgb(), question="a", max_new_token=3),
        TypeError,
        r"max_new_token",
    ),
    "pipeline-missing-image-file": (
        lambda ctx: ctx.pipe(image=str(ctx.root / "gone.png"), question="a"),
        ValueError,
        lambda ctx: r"image file not found: '" + path_of(ctx, "gone.png"),
    ),
    # --- data loaders --------------------------------------------------------------------------------------
    "loader-path-does-not-exist": (
        lambda ctx: loaders.load_image_text_pairs(ctx.root / "nowhere"),
        ValueError,
        lambda ctx: r"cannot tell the format of '" + path_of(ctx, "nowhere") + "': it does not exist",
    ),
    "loader-parquet-does-not-exist": (
        lambda ctx: loaders.load_image_text_pairs(ctx.root / "pairs.parquet"),
        ValueError,
        lambda ctx: r"no \.parquet files found at '" + path_of(ctx, "pairs.parquet"),
    ),
    "loader-imagefolder-does-not-exist": (
        lambda ctx: loaders.load_images(ctx.root / "photos", format="imagefolder"),
        ValueError,
        lambda ctx: r"imagefolder '" + path_of(ctx, "photos") + "' does not exist",
    ),
    "loader-save-to-disk-does-not-exist": (
        lambda ctx: loaders.load_images(ctx.root / "saved", format="disk"),
        ValueError,
        lambda ctx: r"save_to_disk folder '" + path_of(ctx, "saved") + "' does not exist",
    ),
    "loader-unknown-format": (
        lambda ctx: loaders.load_images(ctx.root, format="csv"),
        ValueError,
        r"format 'csv' cannot be read here",
    ),
    "loader-missing-split": (
        lambda ctx: loaders.load_image_text_pairs(str(ctx.shapes), split="holdout"),
        ValueError,
        r"split 'holdout' is not in '.*shapes_questions'",
    ),
    "loader-missing-image-column": (
        lambda ctx: loaders.load_image_text_pairs(str(ctx.shapes), split="test", image_column="photo"),
        ValueError,
        r"image column 'photo' is not in '.*shapes_questions'; its columns are",
    ),
    "loader-conversations-do-not-exist": (
        lambda ctx: loaders.load_conversations(ctx.root / "absent.json"),
        ValueError,
        lambda ctx: r"conversation file '" + path_of(ctx, "absent.json") + "' does not exist",
    ),
    "loader-conversation-row-without-turns": (
        llava([{"image": "red.png", "conversations": turns(("human", "<image> hi"), ("gpt", "red"))}, {"id": "q2", "image": "red.png"}]),
        ValueError,
        r"row 1 \(id 'q2'\) of .*chats\.json: missing field 'conversations'",
    ),
    "loader-conversation-turns-do-not-alternate": (
        llava([{"conversations": turns(("human", "a"), ("human", "b"), ("gpt", "c"))}]),
        ValueError,
        r"row 0 of .*: turns do not alternate: turn 1",
    ),
    "loader-conversation-unknown-role": (
        llava([{"conversations": turns(("human", "a"), ("robot", "b"))}]),
        ValueError,
        r"row 0 of .*: turn 1 comes from 'robot'",
    ),
    "loader-conversation-two-images": (
        llava([{"image": ["red.png", "red.png"], "conversations": turns(("human", "a"), ("gpt", "b"))}]),
        ValueError,
        r"row 0 of .*: 'image' is a list of 2",
    ),
    "loader-conversation-invalid-json-line": (
        lambda ctx: loaders.load_conversations(write(ctx, "chats.jsonl", json.dumps({"conversations": turns(("human", "a"), ("gpt", "b"))}) + "\n{broken\n")),
        ValueError,
        r"chats\.jsonl: row 1 is not valid JSON",
    ),
    "loader-strict-unreadable-image": (
        lambda ctx: loaders.load_conversations(write(ctx, "strict.json", json.dumps([{"image": "broken.png", "conversations": turns(("human", "<image> a"), ("gpt", "b"))}])), image_root=str(ctx.root), strict=True),
        ValueError,
        lambda ctx: r"row 0 of .*strict\.json: image '" + path_of(ctx, "broken.png") + "' cannot be read",
    ),
    # --- collators -----------------------------------------------------------------------------------------
    "collator-caption-empty-batch": (caption([]), ValueError, r"the batch is empty"),
    "collator-chat-empty-batch": (chat([]), ValueError, r"the batch is empty"),
    "collator-masked-empty-batch": (masked([]), ValueError, r"the batch is empty"),
    "collator-batch-not-a-list": (
        caption({"image": None, "text": "a"}),
        TypeError,
        r"a collator takes a list of examples \(dicts\), got dict",
    ),
    "collator-missing-text-field": (
        caption([{"image": None, "text": "a"}, {"image": None, "caption": "b"}]),
        ValueError,
        r"example 1 has no 'text' field; found \['caption', 'image'\]",
    ),
    "collator-text-not-a-string": (
        caption([{"image": None, "text": 5}]),
        TypeError,
        r"example 0: 'text' must be a string, got int",
    ),
    "collator-image-not-pil": (
        caption([{"image": np.zeros((8, 8, 3), np.uint8), "text": "a"}]),
        TypeError,
        r"example 0: 'image' must be a PIL image or None, got ndarray",
    ),
    "collator-empty-image": (
        caption([{"image": rgb(), "text": "a"}, {"image": Image.new("RGB", (0, 0)), "text": "b"}]),
        ValueError,
        r"example 1: 'image': the image is empty \(0x0\)",
    ),
    "collator-every-sample-cut": (
        caption([{"image": None, "text": "a red circle"}], prompt="describe the image .", max_length=3),
        ValueError,
        r"every sample of this batch was dropped: no caption fits within max_length",
    ),
    "collator-max-length-one": (
        caption([{"image": None, "text": "a"}], max_length=1),
        ValueError,
        r"max_length must be at least 2",
    ),
    "collator-messages-empty": (
        chat([{"image": None, "messages": []}]),
        ValueError,
        r"example 0: 'messages' must be a non-empty list",
    ),
    "collator-message-without-role": (
        chat([{"image": None, "messages": [CHAT[0], {"content": "red"}]}]),
        ValueError,
        r"example 0: message 1 must have 'role' and 'content'",
    ),
    "collator-message-content-number": (
        chat([{"image": None, "messages": [{"role": "user", "content": 42}, CHAT[1]]}]),
        TypeError,
        r"example 0: message 0 'content' must be a string or a list of parts, got int",
    ),
    "collator-no-assistant-turn": (
        chat([{"image": None, "messages": CHAT}, {"image": None, "messages": CHAT[:1]}]),
        ValueError,
        r"example 1: no assistant message",
    ),
    "collator-masked-no-image": (masked([{"image": None}]), ValueError, r"no example of this batch has an image"),
    "collator-mask-ratio": (masked([], mask_ratio=1.5), ValueError, r"mask_ratio must lie in \[0, 1\], got 1.5"),
    "collator-patch-size-zero": (masked([], patch_size=0), ValueError, r"patch_size must be a positive int"),
    "collator-mask-patch-size": (
        masked([], mask_patch_size=12),
        ValueError,
        r"mask_patch_size \(12\) must be a multiple of patch_size \(8\)",
    ),
    "collator-tokenizer-without-pad": (no_pad_token, ValueError, r"the tokenizer has no pad token"),
    # --- checkpoints ---------------------------------------------------------------------------------------
    "checkpoint-of-another-model-type": (
        load_hive(lambda ctx: ctx.root / "llama"),
        ValueError,
        lambda ctx: path_of(ctx, "llama") + r" holds a 'llama' model, not a HIVE model",
    ),
    "checkpoint-of-a-vision-encoder": (
        load_hive(lambda ctx: ctx.root / "vit"),
        ValueError,
        lambda ctx: path_of(ctx, "vit") + r" holds a 'vit' model, not a HIVE model",
    ),
    "checkpoint-with-a-missing-shard": (
        load_hive(missing_shard),
        FileNotFoundError,
        r"missing-shard/model-00002-of-\d+\.safetensors",
    ),
    "checkpoint-truncated-weights": (
        load_hive(truncated_weights),
        ValueError,
        r"truncated: a safetensors weights file is corrupt or truncated",
    ),
    "checkpoint-pickle-only": (
        load_hive(pickle_only),
        OSError,
        r"no file named model\.safetensors found in directory .*pickle-only",
    ),
    "checkpoint-pickle-requested": (
        load_hive(lambda ctx: ctx.root / "hive", use_safetensors=False),
        ValueError,
        r"HIVE loads weights from safetensors only",
    ),
    "checkpoint-config-without-text-config": (
        load_hive(config_edit("no-text-config", lambda v: v.pop("text_config"))),
        ValueError,
        r"no-text-config: the HIVE config has no text_config",
    ),
    "checkpoint-config-not-json": (
        load_hive(unparsable_config),
        OSError,
        r"config file at '.*bad-json/config\.json' is not a valid JSON file",
    ),
    # --- evaluation ----------------------------------------------------------------------------------------
    "eval-batch-size-zero": (shapes_eval("zero", batch_size=0), ValueError, r"batch_size must be at least 1, got 0"),
    "eval-predictor-answers-too-few": (
        shapes_eval("few", predict=lambda images, prompts: ["red"], batch_size=2),
        ValueError,
        r"predict_fn must return one string per prompt \(2\)",
    ),
    "eval-corrupt-predictions-file": (
        shapes_eval("torn", sidecar='{"header": {}}\n{torn\n{"id": "x"}\n'),
        ValueError,
        r"torn\.json\.predictions\.jsonl is corrupt at line 2",
    ),
    "eval-predictions-of-another-run": (
        shapes_eval("foreign", sidecar='{"header": {"benchmark": "mme"}}\n'),
        ValueError,
        r"foreign\.json\.predictions\.jsonl holds predictions of another run",
    ),
    # --- recipes -------------------------------------------------------------------------------------------
    "recipe-unknown-key": (
        recipe(lambda v: v.update(colour="red")),
        ValueError,
        r"recipe: unknown key\(s\) \['colour'\]",
    ),
    "recipe-unknown-stage-key": (
        recipe(lambda v: v["stage2"].update(max_stepz=3)),
        ValueError,
        r"stage2: unknown key\(s\) \['max_stepz'\]",
    ),
    "recipe-unknown-hive-key": (
        recipe(lambda v: v["model"]["hive"].update(cross_atention_layers=[[1, 1]])),
        ValueError,
        r"recipe\.model\.hive: unknown key\(s\) \['cross_atention_layers'\]",
    ),
    "recipe-bad-hive-value": (
        recipe(lambda v: v["model"]["hive"].update(cross_attention_layers=[[9, 1]])),
        ValueError,
        r"recipe\.model\.hive: cross_attention_layers: vision layer 9 is out of range",
    ),
    "recipe-wrong-type": (recipe(lambda v: v.update(seed="zero")), ValueError, r"recipe\.seed: expected int, got str"),
    "recipe-wrong-nested-type": (
        recipe(lambda v: v["data"]["stage2"].update(streaming="yes")),
        ValueError,
        r"recipe\.data\.stage2\.streaming: expected bool, got str",
    ),
    "recipe-learning-rate-read-as-text": (
        recipe(lambda v: v["stage2"].update(learning_rate="1e-3")),
        ValueError,
        r"stage2\.learning_rate: expected float, got str \('1e-3'\) \(YAML reads 1e-3 as text",
    ),
    "recipe-fractional-steps": (
        recipe(lambda v: v["stage3"].update(max_steps=2.5)),
        ValueError,
        r"stage3\.max_steps: expected int, got float",
    ),
    "recipe-unknown-data-format": (
        recipe(lambda v: v["data"]["stage2"].update(format="csv")),
        ValueError,
        r"recipe\.data\.stage2\.format: 'csv' is not one of",
    ),
    "recipe-file-does-not-exist": (
        lambda ctx: load_recipe(ctx.root / "missing.yaml"),
        FileNotFoundError,
        lambda ctx: r"recipe '" + path_of(ctx, "missing.yaml") + "' does not exist",
    ),
    "recipe-not-yaml": (
        lambda ctx: load_recipe(ctx.root / "files" / "broken.yaml"),
        ValueError,
        r"recipe '.*broken\.yaml' is not valid YAML: [^\n]*$",
    ),
    "recipe-data-path-does-not-exist": (
        recipe_data_run,
        ValueError,
        lambda ctx: r"data\.stage2\.source: '" + path_of(ctx, "no-such-shards") + r"/\*\.tar' does not exist",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_a_clear_error_naming_it(ctx, name):
    action, error, pattern = CASES[name]
    pattern = pattern(ctx) if callable(pattern) else pattern
    with pytest.raises(error) as raised:
        action(ctx)
    assert type(raised.value) is error, f"{type(raised.value).__name__}: {raised.value}"
    assert re.search(pattern, str(raised.value), re.MULTILINE), f"{pattern!r} not in: {raised.value}"


RECIPE_ARGS = ["train", "--recipe", "{repo}/recipes/tiny-shapes.yaml", "--output-dir", "{root}/cli-run"]
# Each case: (argv, with {root} and {repo} filled in; pattern the one error line must match).
COMMAND_CASES = {
    "train-recipe-does-not-exist": (["train", "--recipe", "{root}/none.yaml"], r"recipe '.*none\.yaml' does not exist"),
    "train-recipe-not-yaml": (["train", "--recipe", "{root}/files/broken.yaml"], r"broken\.yaml' is not valid YAML"),
    "train-unknown-override": ([*RECIPE_ARGS, "stage2.max_stepz=3"], r"stage2: unknown key\(s\) \['max_stepz'\]"),
    "train-override-wrong-type": ([*RECIPE_ARGS, "seed=abc"], r"tiny-shapes\.yaml\.seed: expected int, got str"),
    "train-override-not-key-value": (
        [*RECIPE_ARGS, "stage2.max_steps"],
        r"override 'stage2\.max_steps' must look like key=value",
    ),
    "train-data-path-does-not-exist": (
        [*RECIPE_ARGS, "--stage", "2", "data.stage2.source={root}/gone.parquet", "data.stage2.format=parquet"],
        r"data\.stage2\.source: '.*gone\.parquet' does not exist",
    ),
    "train-stage3-without-stage2": (
        [*RECIPE_ARGS, "--stage", "3"],
        r"stage 3 starts from stage 2's model, and .*stage2/model does not exist",
    ),
    "eval-model-does-not-exist": (
        ["eval", "--model", "{root}/nope", "--benchmark", "hive-shapes", "--data", "{root}"],
        r"nope has no config\.json",
    ),
    "eval-all-with-unnamed-data": (
        ["eval", "--model", "{root}/hive", "--benchmark", "all", "--data", "{root}"],
        r"With --benchmark all, name each dataset",
    ),
    "eval-data-does-not-exist": (
        ["eval", "--model", "{root}/hive", "--benchmark", "hive-shapes", "--data", "{root}/no-data", "--out", "{root}/r.json", "--no-progress"],
        r"no-data is neither a local file or folder",
    ),
    "push-folder-without-weights": (
        ["push", "--model", "{root}/weightless", "--repo-id", "org/name", "--dry-run", "{root}/preview"],
        r"weightless has no model\.safetensors or model\.safetensors\.index\.json",
    ),
    "push-bad-repo-id": (
        ["push", "--model", "{root}/hive", "--repo-id", "no spaces allowed", "--dry-run", "{root}/preview"],
        r"repo_id 'no spaces allowed' is not a Hub repository id",
    ),
    "export-vision-of-another-model-type": (
        ["export-vision", "--model", "{root}/llama", "--out", "{root}/encoder"],
        r"llama holds a 'llama' model, not a HIVE model",
    ),
    "export-vision-folder-does-not-exist": (
        ["export-vision", "--model", "{root}/nope", "--out", "{root}/encoder"],
        r"nope has no config\.json",
    ),
    "card-folder-does-not-exist": (["card", "--model", "{root}/nope"], r"nope has no config\.json"),
    "data-inspect-path-does-not-exist": (
        ["data", "inspect", "--path", "{root}/nope"],
        r"cannot tell the format of '.*nope'",
    ),
    "data-shapes-negative-count": (
        ["data", "shapes", "--out", "{root}/shapes-out", "--num-train", "-5"],
        r"num_train must be a number of scenes, 0 or more; got -5",
    ),
}


@pytest.mark.parametrize("name", list(COMMAND_CASES))
def test_bad_command_line_exits_2_with_one_line_naming_it(ctx, name, capsys):
    argv, pattern = COMMAND_CASES[name]
    argv = [arg.format(root=ctx.root, repo=REPO) for arg in argv]
    capsys.readouterr()
    code = hive(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"hive {argv[0]}")]
    assert len(lines) == 1 and lines[0].startswith(f"hive {argv[0]}: error: "), err
    assert re.search(pattern, lines[0]), f"{pattern!r} not in: {lines[0]}"
    assert "Traceback" not in err
