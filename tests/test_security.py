"""Running no more code than the model needs: the remote-code files' imports, no pickle on any loading path (HIVE
checkpoints, backbones, the Trainer's resume), and the push allow-list keeping tokens, .env files and logs out."""

import ast
import importlib.metadata
import inspect
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers.trainer
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaForCausalLM, Trainer, TrainingArguments, ViTModel
from transformers.dynamic_module_utils import get_imports

from hive_vlm.hub.push import dry_run, upload_files
from hive_vlm.tiny import tiny_text_config, tiny_vision_config
from modeling_hive import HiveForConditionalGeneration
from tiny_hive import build


REPO = Path(__file__).resolve().parents[1]
REMOTE_CODE = sorted((REPO / "modeling_hive").glob("*.py"))
# Besides torch and transformers, the remote-code files may import the standard library and what transformers itself
# cannot work without here: numpy and huggingface_hub (requirements of transformers, installed with it) and Pillow
# (every PIL-backend image processor needs it). Nothing else, and never this project's other packages.
ALLOWED_PACKAGES = {"torch", "transformers", "numpy", "huggingface_hub", "PIL"}
PROJECT_PACKAGES = {"hive_vlm", "training", "eval", "data", "bench", "tests"}
FAKE_TOKEN = "hf_securityTestTokenThatMustNeverBeUploaded42"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in the file, nested ones included; level 0 is absolute. Dynamic imports
    (`__import__`, `importlib.import_module`) come as (0, "<dynamic>")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("__import__", "importlib.import_module", "import_module"):
            found.append((0, "<dynamic>"))
    return found


def test_remote_code_imports_torch_transformers_and_each_other_only():
    assert {path.name for path in REMOTE_CODE} >= {"configuration_hive.py", "modeling_hive.py", "processing_hive.py"}
    siblings = {path.stem for path in REMOTE_CODE}
    third_party = set()
    for path in REMOTE_CODE:
        for level, module in imported_modules(path):
            top = module.split(".")[0]
            if level:  # relative: a sibling file of the flat folder, never a parent package
                assert level == 1 and top in siblings, f"{path.name}: from {'.' * level}{module} import ..."
            elif top not in sys.stdlib_module_names:
                assert module != "<dynamic>", f"{path.name} imports a module by name at run time"
                third_party.add(top)
                assert top not in PROJECT_PACKAGES, f"{path.name} imports the project's {module}"
    assert third_party <= ALLOWED_PACKAGES, f"remote code imports {sorted(third_party - ALLOWED_PACKAGES)}"
    assert {"torch", "transformers"} <= third_party


def test_a_hub_user_needs_only_what_transformers_brings():
    # what transformers' remote-code loader demands to be installed before it runs the files
    needed = set().union(*(get_imports(str(path)) for path in REMOTE_CODE)) - set(sys.stdlib_module_names)
    assert needed <= ALLOWED_PACKAGES, needed
    requirements = importlib.metadata.requires("transformers")
    core = {re.split(r"[<>=!~; \[]", line)[0].lower() for line in requirements if "extra ==" not in line}
    vision = {re.split(r"[<>=!~; \[]", line)[0].lower() for line in requirements if 'extra == "vision"' in line}
    assert {"numpy", "huggingface-hub"} <= core and "pillow" in vision


# ------------------------------------------------------------------------------------------------- no pickle


def repository_python_files() -> list[Path]:
    skipped = {"build", "dist", "outputs", "node_modules"}
    return [
        path for path in REPO.rglob("*.py")
        if not any(part.startswith(".") or part in skipped or part.endswith(".egg-info") for part in path.relative_to(REPO).parts)
    ]  # fmt: skip


def torch_load_calls(tree) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"]


def weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def test_every_torch_load_in_the_repository_is_weights_only_and_nothing_unpickles():
    files = repository_python_files()
    assert len(files) > 50
    loads = 0
    for path in files:
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        for call in torch_load_calls(tree):
            loads += 1
            assert weights_only(call), f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
        if path.name == "test_security.py":
            continue  # plants pickles on purpose, to show they are refused
        for level, module in imported_modules(path):
            assert level or module.split(".")[0] not in ("pickle", "dill", "cloudpickle", "joblib", "shelve"), path
        for pattern in (r"weights_only\s*=\s*False", r"allow_pickle\s*=\s*True", r"\bpickle\.loads?\("):
            assert not re.search(pattern, source), f"{path.relative_to(REPO)}: {pattern}"
    assert loads >= 1  # the tests' own reads of tensors they wrote


def test_the_trainer_reads_optimizer_scheduler_scaler_and_rng_states_weights_only():
    tree = ast.parse(inspect.getsource(transformers.trainer))
    methods = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    for name in ("_load_rng_state", "_load_optimizer_and_scheduler", "_load_scaler", "_load_from_checkpoint"):
        calls = torch_load_calls(methods[name])
        assert calls and all(weights_only(call) for call in calls), f"Trainer.{name} unpickles"
    assert all(weights_only(call) for call in torch_load_calls(tree))


class Payload:
    """Unpickling this creates a folder: proof that a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def plant(path: Path, proof: Path) -> None:
    path.unlink(missing_ok=True)
    torch.save({"state": Payload(proof)}, path)


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": ((self.linear(x).squeeze(-1) - y) ** 2).mean()}


@pytest.mark.parametrize("planted", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin"])
def test_resuming_a_checkpoint_never_runs_a_pickled_payload(tmp_path, planted):
    rows = [{"x": torch.randn(2), "y": torch.randn(())} for _ in range(8)]

    def trainer(max_steps):
        args = TrainingArguments(str(tmp_path / "run"), max_steps=max_steps, save_steps=1, per_device_train_batch_size=2,
                                 use_cpu=True, report_to="none", save_only_model=False)  # fmt: skip
        return Trainer(model=Regressor(), args=args, train_dataset=rows)

    trainer(1).train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / planted).exists() or planted == "pytorch_model.bin"
    if planted == "pytorch_model.bin":
        (checkpoint / "model.safetensors").unlink()
    proof = tmp_path / "payload-ran"
    plant(checkpoint / planted, proof)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer(2).train(resume_from_checkpoint=str(checkpoint))
    assert not proof.exists()


def test_hive_never_reads_pickled_weights(tmp_path):
    proof = tmp_path / "payload-ran"
    build().save_pretrained(tmp_path / "hive")
    (tmp_path / "hive" / "model.safetensors").unlink()
    plant(tmp_path / "hive" / "pytorch_model.bin", proof)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        HiveForConditionalGeneration.from_pretrained(tmp_path / "hive")
    with pytest.raises(ValueError, match="safetensors only"):
        HiveForConditionalGeneration.from_pretrained(tmp_path / "hive", use_safetensors=False)
    # a backbone that ships only a pickle is opened by transformers with weights_only=True: refused, nothing runs
    ViTModel(tiny_vision_config("vit")).save_pretrained(tmp_path / "vision")
    LlamaForCausalLM(tiny_text_config("llama")).save_pretrained(tmp_path / "text")
    (tmp_path / "text" / "model.safetensors").unlink()
    plant(tmp_path / "text" / "pytorch_model.bin", proof)
    with pytest.raises(Exception, match="Weights only load failed") as error:
        HiveForConditionalGeneration.from_backbones(str(tmp_path / "vision"), str(tmp_path / "text"))
    assert isinstance(error.value, (pickle.UnpicklingError, OSError)), repr(error.value)
    assert not proof.exists()


# ------------------------------------------------------------------------------------------------- allow-list


SECRETS = {
    ".env": f"HF_TOKEN={FAKE_TOKEN}\n",
    ".env.local": f"HUGGING_FACE_HUB_TOKEN={FAKE_TOKEN}\n",
    "token": FAKE_TOKEN,
    "hf_token.txt": FAKE_TOKEN,
    ".netrc": f"machine huggingface.co login me password {FAKE_TOKEN}\n",
    "credentials.json": f'{{"token": "{FAKE_TOKEN}"}}',
    ".cache/huggingface/token": FAKE_TOKEN,
    "train.log": f"using token {FAKE_TOKEN}\n",
    "nohup.out": f"HF_TOKEN={FAKE_TOKEN}\n",
    "logs/stderr.txt": FAKE_TOKEN,
    "runs/Jan01/events.out.tfevents.1.host": FAKE_TOKEN,
    "wandb/run-1/files/config.yaml": FAKE_TOKEN,
    "hive_training.json": f'{{"env": "{FAKE_TOKEN}"}}',
    "config.json.bak": FAKE_TOKEN,
    "README.md~": FAKE_TOKEN,
    ".README.md.swp": FAKE_TOKEN,
    "training_args.bin": FAKE_TOKEN,
    "checkpoint-5/trainer_state.json": FAKE_TOKEN,
}


def test_push_allow_list_keeps_tokens_env_files_and_logs_out(tmp_path):
    folder = tmp_path / "final"
    build().save_pretrained(folder)
    clean = set(upload_files(folder))
    for name, text in SECRETS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    assert set(upload_files(folder)) == clean
    files = dry_run(folder, tmp_path / "preview")
    assert set(files) == clean
    for path in (tmp_path / "preview").rglob("*"):
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path.name
    shutil.rmtree(tmp_path / "preview")
