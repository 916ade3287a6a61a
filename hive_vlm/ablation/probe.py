"""The linear probe of an encoder on hive-shapes' labels: one per visual level, before and after a study's training."""

import datasets
import torch

from hive_vlm.data.shapes_layouts import to_classification
from hive_vlm.eval.benchmark import HiveExamples
from hive_vlm.eval.classification import extract_features, top_k_accuracy, train_linear_probe


LEVEL_TARGETS = {"low": "color", "mid": "shape", "high": "count"}  # linear-probe label per visual level


def probe_encoder(encoder, image_processor, shapes_path, epochs: int, limit: int | None = None) -> dict:
    """Linear-probe top-1 accuracy (MAE protocol, `hive_vlm.eval.classification`) of `encoder`'s mean-pooled last
    hidden state on one hive-shapes label per level: colour (low), shape (mid), object count (high)."""
    shapes = datasets.load_from_disk(str(shapes_path))
    train, test = shapes["train"], shapes["test"]
    if limit:
        train, test = train.select(range(min(limit, len(train)))), test.select(range(min(limit, len(test))))
    encoder.eval()
    features = {name: extract_features(encoder, image_processor, HiveExamples(split), progress=False)
                for name, split in (("train", train), ("test", test))}  # fmt: skip
    encoder.train()
    scores = {}
    for level, target in LEVEL_TARGETS.items():
        labels = {name: torch.tensor(to_classification(split, target)["label"]) for name, split in (("train", train), ("test", test))}
        num_classes = len(to_classification(train.select(range(1)), target).features["label"].names)
        head = train_linear_probe(features["train"], labels["train"], num_classes, epochs=epochs, batch_size=256)
        with torch.no_grad():
            scores[level] = round(top_k_accuracy(head(features["test"]), labels["test"], 1), 2)
    return scores
