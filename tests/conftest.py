import os

# Nothing in the suite may reach the Hub: everything is built from configs or written by the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine threads oversubscribe it (seen:
# single tests 10-100x slower). One thread per process; subprocesses inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from tiny_hive import CORPUS, tiny_model, tiny_processor  # noqa: E402


# The tiny processor, the tiny model and their saved folder, built once per test module. A module changes what they
# are built from by defining its own `corpus`, `hive_options` or `save_options` fixture. Tests that change a model
# build their own (`tiny_hive.tiny_model`).


@pytest.fixture(scope="module")
def corpus():
    """The sentences the tiny word tokenizer is built from."""
    return CORPUS


@pytest.fixture(scope="module")
def hive_options():
    """HiveConfig fields of the tiny model beyond `gate_init=0.5` (gates half open, so the image matters)."""
    return {}


@pytest.fixture(scope="module")
def save_options():
    """`save_pretrained` arguments of `saved_folder` (a module sets `max_shard_size` to get a sharded folder)."""
    return {}


@pytest.fixture(scope="module")
def processor(corpus):
    """A HiveProcessor: 32x32 ViT image processing and a word tokenizer built from `corpus`."""
    return tiny_processor(corpus)


@pytest.fixture(scope="module")
def model(processor, hive_options):
    """A ViT + Llama HIVE model in eval mode, seed 0, gates at 0.5, sized to the processor's tokenizer."""
    return tiny_model(processor, gate_init=0.5, **hive_options).eval()


@pytest.fixture(scope="module")
def saved_folder(model, processor, save_options, tmp_path_factory):
    """`model` and `processor` saved together in one folder, as `from_pretrained` reads it."""
    folder = tmp_path_factory.mktemp("hive")
    model.save_pretrained(folder, **save_options)
    processor.save_pretrained(folder)
    return folder
