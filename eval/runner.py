"""The generic evaluation runner: batched generation, a progress bar, resumable predictions, a results JSON."""

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from hive_vlm.files import write_atomically, write_json_atomic
from modeling_hive.processing_hive import vqa_prompt

from .benchmark import HiveBenchmark


PredictFn = Callable[[list[PIL.Image.Image], list[str]], list[str]]


def generate_answers(model, processor, images, prompts, max_new_tokens: int = 16) -> list[str]:
    """
    Greedy answers of a vision-language model to one batch of (image, prompt) pairs.

    Each prompt becomes a user turn holding the image, rendered with the processor's chat template when it has
    one and tokenized without adding special tokens again (as HIVE's visual-question-answering pipeline does);
    the batch is left-padded, generated with
    `do_sample=False`, and only the new tokens are decoded, without special tokens, and stripped.

    Args:
        model: a model with `generate`, e.g. `HiveForConditionalGeneration`.
        processor: its processor, called as `processor(images=images, text=texts, return_tensors="pt", ...)`.
        images (`list[PIL.Image.Image]`): one image per prompt.
        prompts (`list[str]`): the benchmark's prompts.
        max_new_tokens (`int`, *optional*, defaults to 16): longest answer, in tokens.

    Example:
        >>> from functools import partial
        >>> predict = partial(generate_answers, model, processor, max_new_tokens=8)  # doctest: +SKIP
        >>> predict([image], ["What colour is the circle?"])  # doctest: +SKIP
        ['red']
    """
    if len(images) != len(prompts):
        raise ValueError(f"Got {len(images)} images for {len(prompts)} prompts; pass one image per prompt.")
    rendered = [vqa_prompt(processor, prompt) for prompt in prompts]
    texts, text_kwargs = [text for text, _ in rendered], rendered[0][1] if rendered else {}
    inputs = processor(
        images=list(images), text=texts, return_tensors="pt", padding=True, padding_side="left", **text_kwargs
    )
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
    return [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def model_identity(model_dir) -> dict:
    """The model's folder and the sha256 of its `config.json`, as recorded with every result."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise ValueError(f"{model_dir} has no config.json; pass the folder of a saved model.")
    return {"path": str(Path(model_dir).resolve()), "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}


def load_model(model_dir, device: str | None = None, dtype: str = "auto"):
    """
    Load a saved vision-language model and its processor with the Auto classes (`trust_remote_code=True`).

    Args:
        model_dir (`str` or `os.PathLike`): the saved folder (a HIVE checkpoint or any image-text-to-text model).
        device (`str`, *optional*): where to run; defaults to "cuda" when available, else "cpu".
        dtype (`str`, *optional*, defaults to `"auto"`): the weights' dtype ("auto", "float32", "bfloat16", ...).

    Returns:
        `(model, processor)`, the model in eval mode.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval(), processor


def evaluate_benchmark(
    benchmark: HiveBenchmark,
    data,
    predict_fn: PredictFn,
    out,
    *,
    protocol: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    model: dict | None = None,
    progress: bool = True,
) -> dict:
    """
    Run one benchmark end to end and write its results JSON.

    Predictions are appended to `<out>.predictions.jsonl` after every batch (flushed and fsynced), so a killed
    run started again with the same arguments skips the questions already answered. That file starts with a
    header naming the benchmark, data, split, prompt template, generation budget and model; a different header
    is refused. Once every question is answered, the results are written atomically to `out` and the sidecar is
    removed.

    Args:
        benchmark (`HiveBenchmark`): the adapter.
        data (`str` or `os.PathLike`): the benchmark's data (see `HiveBenchmark.load`).
        predict_fn (`Callable[[list[PIL.Image.Image], list[str]], list[str]]`): answers a batch of (image,
            prompt) pairs, e.g. `functools.partial(generate_answers, model, processor, max_new_tokens=16)`.
        out (`str` or `os.PathLike`): the results JSON to write.
        protocol (`str`, *optional*): the scoring variant; defaults to the benchmark's first.
        split (`str`, *optional*): the split; defaults to the benchmark's.
        limit (`int`, *optional*): evaluate only the first questions.
        batch_size (`int`, *optional*, defaults to 8): prompts per `predict_fn` call.
        model (`dict`, *optional*): the model's identity (see `model_identity`), stored with the results.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar.

    Returns:
        The results: `benchmark`, `protocol`, `prompt_template`, `model`, `data`, `split`, `limit`,
        `num_examples`, `max_new_tokens`, `scores` and `samples` (one {"id", "prompt", "prediction", "reference"}
        per question).

    Example:
        >>> from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
        >>> results = evaluate_benchmark(HiveShapesBenchmark(), "shapes/", lambda images, prompts: ["red"] * len(prompts),
        ...                              "results.json")  # doctest: +SKIP
        >>> results["scores"]  # doctest: +SKIP
        {'accuracy': 12.5, 'low': 37.5, 'mid': 0.0, 'high': 0.0}
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    protocol = benchmark.resolve_protocol(protocol)
    split = split or benchmark.split
    examples = benchmark.load(data, limit=limit, split=split)
    if len(examples) == 0:
        raise ValueError(f"{benchmark.name} data at {data} (split {split!r}) holds no questions.")
    ids = benchmark.example_ids(examples.rows)
    duplicates = [example_id for example_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        duplicate = duplicates[0]
        raise ValueError(f"{benchmark.name} data at {data} has the question id {duplicate!r} more than once.")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = out.with_name(out.name + ".predictions.jsonl")
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a run killed mid-write; never read, now gone
        stale.unlink(missing_ok=True)
    header = {
        "benchmark": benchmark.name,
        "data": str(data),
        "split": split,
        "prompt_template": benchmark.prompt_template,
        "max_new_tokens": benchmark.max_new_tokens,
        "model": model,
    }
    answered = _read_sidecar(sidecar, header)
    pending = [index for index, example_id in enumerate(ids) if example_id not in answered]

    with open(sidecar, "a", encoding="utf-8") as stream, tqdm(
        total=len(ids), initial=len(ids) - len(pending), desc=benchmark.name, disable=not progress
    ) as bar:
        if stream.tell() == 0:
            _append(stream, [{"header": header}])
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            rows = [examples.rows[index] for index in batch]
            prompts = [benchmark.build_prompt(row) for row in rows]
            answers = predict_fn([examples.image(index) for index in batch], prompts)
            if not isinstance(answers, (list, tuple)) or len(answers) != len(batch):
                raise ValueError(f"predict_fn must return one string per prompt ({len(batch)}), got {answers!r}.")
            records = [
                {"id": ids[index], "prompt": prompt, "prediction": str(answer), "reference": benchmark.reference(row)}
                for index, row, prompt, answer in zip(batch, rows, prompts, answers)
            ]
            _append(stream, records)
            answered.update((record["id"], record) for record in records)
            bar.update(len(batch))

    samples = [answered[example_id] for example_id in ids]
    scores = benchmark.score(
        [sample["prediction"] for sample in samples], [sample["reference"] for sample in samples], protocol
    )
    results = {
        "benchmark": benchmark.name,
        "protocol": protocol,
        "prompt_template": benchmark.prompt_template,
        "model": model,
        "data": str(data),
        "split": split,
        "limit": limit,
        "num_examples": len(samples),
        "max_new_tokens": benchmark.max_new_tokens,
        "scores": scores,
        "samples": samples,
    }
    write_json_atomic(out, results)
    sidecar.unlink()
    return results


def _append(stream, records: list[dict]) -> None:
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


def _read_sidecar(sidecar: Path, header: dict) -> dict:
    """The records of an interrupted run (id -> record); a torn last line is dropped and the file rewritten."""
    if not sidecar.exists():
        return {}
    lines = sidecar.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{sidecar} is corrupt at line {number + 1}; delete it to start over.") from None
    if not records:
        sidecar.unlink()
        return {}
    found = records[0].get("header")
    if json.loads(json.dumps(header)) != found:
        raise ValueError(
            f"{sidecar} holds predictions of another run ({found}); this run is {header}. Delete it to start over, "
            "or pass another --out."
        )
    if len(records) != len(lines):
        write_atomically(sidecar, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return {record["id"]: record for record in records[1:]}

