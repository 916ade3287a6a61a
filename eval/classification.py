"""Image classification: a linear probe on frozen encoder features, and zero-shot classification by the VLM."""

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModel, AutoProcessor

from hive_vlm.files import write_json_atomic
from modeling_hive.backbones_hive import as_tokens  # a convolutional encoder's (B, C, H, W) map as (B, H * W, C)

from .benchmark import HiveBenchmark, HiveExamples, first_rows, load_metric, load_published
from .runner import model_identity


ZERO_SHOT_QUESTION = "What type of object is in this photo?"


def classification_columns(rows: datasets.Dataset, where: str) -> tuple[str, str]:
    """The first `Image` column and the first `ClassLabel` column of an image-classification dataset."""
    image = next((name for name, f in rows.features.items() if isinstance(f, datasets.Image)), None)
    label = next((name for name, f in rows.features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image is None or label is None:
        raise ValueError(
            f"{where} is not an image-classification dataset: it needs an Image column and a ClassLabel column "
            f"(features: {rows.features})."
        )
    return image, label


def _classification_rows(path, split, limit) -> datasets.Dataset:
    rows = load_published(path, split=split)
    image, label = classification_columns(rows, where=f"classification data at {path} (split {split!r})")
    rows = rows.select_columns([image, label])
    if image != "image":
        rows = rows.rename_column(image, "image")
    if label != "label":
        rows = rows.rename_column(label, "label")
    return first_rows(rows, limit)


class HiveZeroShotClassificationBenchmark(HiveBenchmark):
    """
    Zero-shot image classification by prompting the VLM, on any `datasets` image-classification dataset (its first
    `Image` and `ClassLabel` columns); split `test` by default.

    Prompt: "What type of object is in this photo?", followed with `with_labels=True` by " Answer with one of:
    {label names}." (meant for small label sets: the list goes into every prompt). An answer is right when the
    label name appears in it as whole words (`eval/metrics/zero_shot_accuracy`).

    Args:
        with_labels (`bool`, *optional*, defaults to `False`): list the label names in the prompt; the benchmark is
            then named "classification-with-labels".

    Example:
        >>> HiveZeroShotClassificationBenchmark().build_prompt({"label_name": "cat"})
        'What type of object is in this photo?'
    """

    protocols = ("label-in-answer",)
    split = "test"

    def __init__(self, with_labels: bool = False):
        self.with_labels = with_labels
        self.name = "classification-with-labels" if with_labels else "classification"
        self.prompt_template = ZERO_SHOT_QUESTION + (" Answer with one of: {label names}." if with_labels else "")

    def load(self, path, limit=None, split=None) -> HiveExamples:
        rows = _classification_rows(path, split or self.split, limit)
        names = rows.features["label"].names
        rows = rows.add_column("label_name", [names[label] for label in rows["label"]])
        if self.with_labels:
            rows = rows.add_column("choices", [", ".join(name.replace("_", " ") for name in names)] * len(rows))
        return HiveExamples(rows)

    def build_prompt(self, example: dict) -> str:
        if self.with_labels:
            return f"{ZERO_SHOT_QUESTION} Answer with one of: {example['choices']}."
        return ZERO_SHOT_QUESTION

    def reference(self, example: dict) -> dict:
        return {"label": example["label_name"]}

    def score(self, predictions, references, protocol) -> dict:
        labels = [reference["label"] for reference in references]
        return load_metric("zero_shot_accuracy").compute(predictions=predictions, references=labels)


def load_vision_encoder(model_dir):
    """
    The vision encoder and its image processor, from an exported encoder folder or a HIVE checkpoint.

    The folder is loaded with `AutoModel` (`trust_remote_code=True`). When the model holds a sub-module named
    `vision_model` (HIVE's `model.vision_model`, or the tower of a CLIP/SigLIP model), the shallowest one is
    the encoder; otherwise the model itself is. The image processor is the folder's own, or that of its processor.

    Returns:
        `(encoder, image_processor, source)`, `source` naming the module used.
    """
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    towers = [name for name, _ in model.named_modules() if name.split(".")[-1] == "vision_model"]
    source = min(towers, key=lambda name: name.count(".")) if towers else ""
    encoder = model.get_submodule(source) if source else model
    try:
        image_processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
    except (OSError, ValueError):
        image_processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True).image_processor
    return encoder.eval(), image_processor, f"{type(model).__name__}.{source}" if source else type(model).__name__


def extract_features(encoder, image_processor, examples: HiveExamples, pooling="mean", batch_size=64, progress=True):
    """Frozen features (N, D): the last hidden state averaged over tokens ("mean") or its first token ("cls")."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}.")
    parameter = next(encoder.parameters())
    features = []
    for start in tqdm(range(0, len(examples), batch_size), desc="features", disable=not progress):
        images = [examples.image(index) for index in range(start, min(start + batch_size, len(examples)))]
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hidden = as_tokens(encoder(pixel_values=pixel_values.to(parameter.device, parameter.dtype)).last_hidden_state)
        pooled = hidden.mean(dim=1) if pooling == "mean" else hidden[:, 0]  # (B, D)
        features.append(pooled.float().cpu())
    return torch.cat(features)


def train_linear_probe(features, labels, num_classes, epochs=90, batch_size=256, learning_rate=0.1, seed=0):
    """
    MAE's linear-probe head on frozen features: BatchNorm without affine parameters, then a linear layer, trained
    with cross-entropy (SGD, momentum 0.9, no weight decay, cosine schedule; MAE itself uses LARS at large batch).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.BatchNorm1d(features.shape[1], affine=False, eps=1e-6), nn.Linear(features.shape[1], num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=learning_rate, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = -(-len(features) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), batch_size):
            batch = order[start : start + batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def top_k_accuracy(logits, labels, k: int) -> float:
    """100 * share of samples whose label is among the k highest logits (k at most the number of classes)."""
    k = min(k, logits.shape[1])
    return 100.0 * (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


def linear_probe(
    model_dir,
    data,
    out=None,
    *,
    train_split: str = "train",
    test_split: str = "test",
    pooling: str = "mean",
    epochs: int = 90,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """
    Linear-probe accuracy of a vision encoder (MAE protocol): frozen features of `train_split` train a
    BatchNorm-without-affine + linear head with cross-entropy; top-1 and top-5 are measured on `test_split`.

    Args:
        model_dir (`str` or `os.PathLike`): an exported encoder folder or a HIVE checkpoint (see
            `load_vision_encoder`).
        data (`str` or `os.PathLike`): any image-classification dataset with both splits (`load_published`).
        out (`str` or `os.PathLike`, *optional*): where to write the results JSON (atomically).
        train_split, test_split (`str`): the splits to train and measure on.
        pooling (`str`, *optional*, defaults to `"mean"`): "mean" over tokens, or "cls" (first token).
        epochs, batch_size, learning_rate, seed: the head's training.
        limit (`int`, *optional*): use only the first images of each split.
        progress (`bool`): show progress bars.

    Returns:
        The results, with `scores` = {"top1", "top5"} (top-5 is top-k with k = min(5, classes)).

    Example:
        >>> linear_probe("exported-encoder/", "cifar10-folder/", "probe.json")["scores"]  # doctest: +SKIP
        {'top1': 61.2, 'top5': 95.8}
    """
    encoder, image_processor, source = load_vision_encoder(model_dir)
    train_rows = _classification_rows(data, train_split, limit)
    test_rows = _classification_rows(data, test_split, limit)
    names = train_rows.features["label"].names
    if test_rows.features["label"].names != names:
        raise ValueError(f"The {train_split!r} and {test_split!r} splits of {data} have different label names.")

    train_features = extract_features(encoder, image_processor, HiveExamples(train_rows), pooling, progress=progress)
    test_features = extract_features(encoder, image_processor, HiveExamples(test_rows), pooling, progress=progress)
    train_labels = torch.tensor(train_rows["label"])
    test_labels = torch.tensor(test_rows["label"])
    head = train_linear_probe(train_features, train_labels, len(names), epochs, batch_size, learning_rate, seed)
    with torch.no_grad():
        logits = head(test_features)
    results = {
        "benchmark": "linear-probe",
        "protocol": "mae-linear-probe",
        "model": model_identity(model_dir),
        "encoder": source,
        "data": str(data),
        "train_split": train_split,
        "test_split": test_split,
        "limit": limit,
        "num_train": len(train_rows),
        "num_test": len(test_rows),
        "num_classes": len(names),
        "pooling": pooling,
        "training": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed},
        "scores": {"top1": top_k_accuracy(logits, test_labels, 1), "top5": top_k_accuracy(logits, test_labels, 5)},
    }
    if out is not None:
        write_json_atomic(out, results)
    return results
