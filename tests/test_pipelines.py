"""The VQA and image-text-to-text pipelines, the saved Hub folder, and loading it in a fresh offline process."""

import json
import re

import numpy as np
import pytest
import torch
from isolated import run_isolated
from PIL import Image
from transformers import pipeline

from modeling_hive.pipeline_hive import HiveVisualQuestionAnsweringPipeline
from hive_vlm.eval.runner import generate_answers
from modeling_hive.images_hive import load_rgb_image


CORPUS = [
    "a red circle and a blue square .",
    "what colour is the circle ? red",
    "how many shapes are there ? 2",
    "is the triangle striped ? no",
]
QUESTIONS = ["what colour is the circle ?", "how many shapes are there in this picture ?"]


@pytest.fixture(scope="module")
def corpus():
    return CORPUS


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(40, 30), (24, 48)]):
        path = folder / f"scene{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def vqa(model, processor):
    return HiveVisualQuestionAnsweringPipeline(model=model, processor=processor)


@pytest.fixture
def generate_calls(model, monkeypatch):
    """Records the keyword arguments of every `model.generate` call."""
    calls = []
    original = model.generate

    def recording_generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    return calls


def chat(image, question):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def reference_answer_ids(model, processor, image, question, max_new_tokens=16):
    inputs = processor.apply_chat_template(
        chat(image, question), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=processor.tokenizer.pad_token_id)
    return inputs, sequences[0, inputs["input_ids"].shape[1] :]


# --- visual-question-answering ---------------------------------------------------------------------------------


def test_vqa_answer_is_the_models_generation_with_the_image(vqa, model, processor, image_paths, generate_calls):
    result = vqa(image=image_paths[0], question=QUESTIONS[0])
    inputs, answer_ids = reference_answer_ids(model, processor, image_paths[0], QUESTIONS[0])
    assert result == [{"answer": processor.decode(answer_ids, skip_special_tokens=True).strip()}]
    torch.testing.assert_close(generate_calls[0]["pixel_values"], inputs["pixel_values"])
    assert generate_calls[0]["input_ids"].tolist() == inputs["input_ids"].tolist()


def test_hive_eval_asks_the_pipelines_question(vqa, model, processor, image_paths):
    # One prompt builder (`vqa_prompt`) for the pipeline, `hive eval` and the studies: the same answers, batched or not.
    images = [load_rgb_image(path) for path in image_paths[:2]]
    answers = generate_answers(model, processor, images, QUESTIONS[:2], max_new_tokens=16)
    assert answers == [vqa(image=path, question=question)[0]["answer"] for path, question in zip(image_paths[:2], QUESTIONS[:2])]


def test_vqa_input_forms_agree(vqa, image_paths):
    first, second = image_paths
    single = vqa(image=first, question=QUESTIONS[0])
    assert isinstance(single, list) and len(single) == 1 and isinstance(single[0]["answer"], str)
    assert vqa({"image": first, "question": QUESTIONS[0]}) == single
    assert vqa(first, QUESTIONS[0]) == single
    assert vqa(image=Image.open(first), question=QUESTIONS[0]) == single
    pair = vqa([{"image": first, "question": QUESTIONS[0]}, {"image": second, "question": QUESTIONS[1]}])
    assert pair[0] == single and len(pair) == 2 and pair[1] == vqa(image=second, question=QUESTIONS[1])
    assert vqa(image=[first, second], question=QUESTIONS) == pair
    assert vqa(image=[first, second], question=QUESTIONS[0]) == [single, vqa(image=second, question=QUESTIONS[0])]
    assert vqa(image=first, question=QUESTIONS) == [single, vqa(image=first, question=QUESTIONS[1])]


def test_vqa_honours_max_new_tokens(vqa, model, processor, image_paths, generate_calls):
    result = vqa(image=image_paths[1], question=QUESTIONS[1], max_new_tokens=2)
    assert generate_calls[-1]["max_new_tokens"] == 2
    _, answer_ids = reference_answer_ids(model, processor, image_paths[1], QUESTIONS[1], max_new_tokens=2)
    assert len(answer_ids) <= 2
    assert result == [{"answer": processor.decode(answer_ids, skip_special_tokens=True).strip()}]
    vqa(image=image_paths[1], question=QUESTIONS[1])
    assert generate_calls[-1]["max_new_tokens"] == 16


def test_vqa_batching_matches_one_by_one(vqa, image_paths, generate_calls):
    inputs = [{"image": path, "question": question} for path in image_paths for question in QUESTIONS]
    one_by_one = vqa(inputs, batch_size=1)
    assert [call["input_ids"].shape[0] for call in generate_calls] == [1, 1, 1, 1]
    batched = vqa(inputs, batch_size=3)
    assert [call["input_ids"].shape[0] for call in generate_calls[4:]] == [3, 1]
    assert batched == one_by_one


def test_vqa_bad_inputs_name_the_problem(vqa, image_paths, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 definitely not a jpeg")
    cases = [
        (dict(question=QUESTIONS[0]), ValueError, "has no image"),
        (dict(image={"question": QUESTIONS[0]}), ValueError, "has no image"),
        (dict(image=[image_paths[0], None], question=QUESTIONS[0]), ValueError, "Input 1 has no image"),
        (dict(image=image_paths[0]), ValueError, "has no question"),
        (dict(image=image_paths[0], question=""), ValueError, "question is empty"),
        (dict(image=image_paths[0], question="   "), ValueError, "question is empty"),
        (dict(image=image_paths[0], question=7), TypeError, "question must be a string"),
        (dict(image=b"raw bytes", question=QUESTIONS[0]), TypeError, "unsupported image type bytes"),
        (dict(image=str(tmp_path / "nowhere.png"), question=QUESTIONS[0]), ValueError, "not found"),
        (dict(image=str(corrupt), question=QUESTIONS[0]), ValueError, "corrupt"),
        (dict(image=image_paths * 3, question=QUESTIONS), ValueError, "6 images and 2 questions"),
        (dict(image={"image": image_paths[0], "question": "a", "answer": "b"}), ValueError, "unexpected keys"),
        (dict(image={"image": image_paths[0], "question": "a"}, question="b"), ValueError, "not both"),
        (dict(image=image_paths[0], question="a", temprature=0.5), TypeError, "temprature"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            vqa(**kwargs)


def test_vqa_needs_a_processor(model, processor):
    with pytest.raises(ValueError, match="needs a processor"):
        HiveVisualQuestionAnsweringPipeline(model=model, tokenizer=processor.tokenizer)


# --- image-text-to-text ----------------------------------------------------------------------------------------


def test_image_text_to_text_plain_prompt_and_chat(model, processor, image_paths):
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    plain = pipe(images=image_paths[0], text="a red circle", max_new_tokens=4, return_tensors=True)
    inputs = processor(images=image_paths[0], text="a red circle", return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=4, pad_token_id=processor.tokenizer.pad_token_id)[0]
    assert plain[0]["generated_token_ids"].tolist() == expected.tolist()

    from_chat = pipe(text=chat(image_paths[1], QUESTIONS[0]), max_new_tokens=4, return_full_text=False)
    _, answer_ids = reference_answer_ids(model, processor, image_paths[1], QUESTIONS[0], max_new_tokens=4)
    assert from_chat[0]["generated_text"].strip() == processor.decode(answer_ids, skip_special_tokens=True).strip()


def test_image_text_to_text_chat_without_image_is_an_error(model, processor):
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    with pytest.raises(ValueError, match="image block but no image"):
        pipe(text=messages, max_new_tokens=2)


# --- the folder a user downloads -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def save_options():
    return {"max_shard_size": "200KB"}  # several shards, as a user downloads a large model


def referenced_code_files(folder) -> set[str]:
    """Module files named by every `auto_map` and by `custom_pipelines` in the folder's JSON files."""
    references = []
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        data = json.loads((folder / name).read_text())
        for value in data.get("auto_map", {}).values():
            references.extend(v for v in (value if isinstance(value, list) else [value]) if v)
        references.extend(task["impl"] for task in data.get("custom_pipelines", {}).values())
    return {reference.split(".")[0] + ".py" for reference in references}


def test_hub_folder_layout(saved_folder):
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_hive.HiveForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_hive.HiveConfig"
    assert config["custom_pipelines"]["visual-question-answering"]["impl"] == (
        "pipeline_hive.HiveVisualQuestionAnsweringPipeline"
    )
    assert config["custom_pipelines"]["visual-question-answering"]["pt"] == ["AutoModelForImageTextToText"]
    processor_config = json.loads((saved_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_hive.HiveProcessor"

    index = json.loads((saved_folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and all((saved_folder / shard).is_file() for shard in shards)
    for name in (
        "generation_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
    ):
        assert (saved_folder / name).is_file(), name
    assert "library_name: transformers" in (saved_folder / "README.md").read_text()

    code_files = referenced_code_files(saved_folder)
    assert {"configuration_hive.py", "modeling_hive.py", "processing_hive.py", "pipeline_hive.py"} <= code_files
    for code_file in sorted(code_files):
        source = (saved_folder / code_file).read_text()
        assert "hive_vlm" not in source, f"{code_file} imports the training package"
        for module in re.findall(r"^\s*from\s+\.(\w+)\s+import", source, flags=re.MULTILINE):
            assert (saved_folder / f"{module}.py").is_file(), f"{code_file} imports .{module}, missing from the folder"


FRESH_PROCESS_CODE = """
import json
try:
    import modeling_hive
    project_importable = True
except ImportError:
    project_importable = False
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=images[0], text="a red circle", return_tensors="pt")
direct = model.generate(**inputs, max_new_tokens=4, pad_token_id=processor.tokenizer.pad_token_id)[0].tolist()
with torch.no_grad():
    logits = model(**inputs).logits[0, -1].tolist()

vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
vqa_single = vqa(image=images[0], question=questions[0])
vqa_batch = vqa([{"image": image, "question": question} for image in images for question in questions], batch_size=3)
try:
    vqa(question=questions[0])
    vqa_error = None
except ValueError as error:
    vqa_error = str(error)

chat_pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
plain = chat_pipe(images=images[0], text="a red circle", max_new_tokens=4, return_tensors=True)
messages = [{"role": "user", "content": [{"type": "image", "path": images[1]}, {"type": "text", "text": questions[0]}]}]
from_chat = chat_pipe(text=messages, max_new_tokens=4, return_tensors=True)
print(json.dumps({
    "project_importable": project_importable,
    "model_class": type(model).__module__,
    "pipeline_class": type(vqa).__name__,
    "direct": direct,
    "logits": logits,
    "vqa_single": vqa_single,
    "vqa_batch": vqa_batch,
    "vqa_error": vqa_error,
    "plain": plain[0]["generated_token_ids"].tolist(),
    "chat": from_chat[0]["generated_token_ids"].tolist(),
}))
"""


def test_fresh_offline_process_reproduces_in_memory_answers(saved_folder, model, processor, vqa, image_paths, tmp_path):
    pad = processor.tokenizer.pad_token_id
    inputs = processor(images=image_paths[0], text="a red circle", return_tensors="pt")
    direct = model.generate(**inputs, max_new_tokens=4, pad_token_id=pad)[0].tolist()
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    chat_inputs = processor.apply_chat_template(
        chat(image_paths[1], QUESTIONS[0]), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    chat_ids = model.generate(**chat_inputs, max_new_tokens=4, pad_token_id=pad)[0].tolist()
    vqa_batch = vqa([{"image": image, "question": question} for image in image_paths for question in QUESTIONS])

    values = f"folder, images, questions = {str(saved_folder)!r}, {image_paths!r}, {QUESTIONS!r}\n"
    result = run_isolated(values + FRESH_PROCESS_CODE, str(tmp_path))

    assert result["project_importable"] is False
    assert result["model_class"].startswith("transformers_modules.")
    assert result["pipeline_class"] == "HiveVisualQuestionAnsweringPipeline"
    assert result["direct"] == direct
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=1e-5, atol=1e-6)
    assert result["plain"] == direct
    assert result["chat"] == chat_ids
    assert result["vqa_single"] == vqa_batch[0]
    assert result["vqa_batch"] == vqa_batch
    assert "has no image" in result["vqa_error"]
