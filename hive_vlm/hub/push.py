"""Uploads of a saved HIVE folder to the Hub, admitting only the files a user needs to load it (`hive push`'s
library, and `hive train`'s upload)."""

import glob
import json
import logging
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .card import write_model_card
from .record import write_training_record


logger = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "generation_config.json")
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "image_processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
CARD = "README.md"
# Files whose `auto_map` / `custom_pipelines` name the code modules the Hub folder must carry.
CODE_REFERENCES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.MULTILINE)


def _referenced_modules(model_dir: Path) -> set[str]:
    """Module names that an `auto_map` or `custom_pipelines` entry of the folder points to (local modules only)."""
    modules = set()
    for name in CODE_REFERENCES:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); the folder cannot be loaded as it is.") from error
        references = []
        for value in (data.get("auto_map") or {}).values():
            references.extend(value if isinstance(value, list) else [value])
        references.extend(task.get("impl") for task in (data.get("custom_pipelines") or {}).values())
        modules.update(reference.split(".")[0] for reference in references if reference and "--" not in reference)
    return modules


def _code_files(model_dir: Path) -> list[str]:
    """The `.py` files the folder's remote code needs: the referenced modules and, transitively, their relative imports."""
    pending, found = sorted(_referenced_modules(model_dir)), set()
    while pending:
        module = pending.pop()
        if module in found:
            continue
        path = model_dir / f"{module}.py"
        if not path.is_file():
            raise ValueError(
                f"{model_dir} refers to the module {module!r} (in an auto_map, custom_pipelines or a relative import) "
                f"but has no {module}.py; save the model again with save_pretrained."
            )
        found.add(module)
        pending.extend(_RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8")))
    return sorted(f"{module}.py" for module in found)


def _weight_files(model_dir: Path) -> list[str]:
    """`model.safetensors`, or the index and every shard it names."""
    index = model_dir / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index (no weight_map): {error}") from error
        missing = [shard for shard in shards if not (model_dir / shard).is_file() or "/" in shard]
        if missing:
            raise ValueError(f"{index} names shard(s) {missing} that are not files of {model_dir}; save the model again.")
        return [WEIGHTS_INDEX, *shards]
    if (model_dir / WEIGHTS).is_file():
        return [WEIGHTS]
    raise ValueError(f"{model_dir} has no {WEIGHTS} or {WEIGHTS_INDEX}; HIVE folders hold their weights as safetensors.")


def check_repo_id(repo_id: str) -> None:
    """Raises a ValueError unless `repo_id` is a valid Hub repository id (`ORG/NAME`)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r} is not a Hub repository id (ORG/NAME): {error}") from None
    if "/" not in repo_id:
        raise ValueError(f"repo_id {repo_id!r} must name its owner: ORG/NAME (or USER/NAME).")


def upload_files(model_dir) -> list[str]:
    """
    The files of a saved HIVE folder that go to the Hub: the allow-list `hive push` uploads and `--dry-run` copies.

    Admitted, from the folder's top level only: `config.json`, `generation_config.json`, the safetensors weights
    (`model.safetensors`, or `model.safetensors.index.json` and the shards it names), the code modules named by the
    `auto_map`s and `custom_pipelines` (with their relative imports), the processor and tokenizer files, and
    `README.md`. Everything else stays behind: sub-folders (`checkpoint-*/`, `runs/`, `logs/`), optimizer and
    scheduler states, `trainer_state.json`, `training_args.bin`, pickles (`*.bin`, `*.pt`, `*.pth`, `*.pkl`), stray
    scripts and weights, hidden files (`.env`) and token files.

    Args:
        model_dir (`str` or `os.PathLike`): the saved HIVE folder.

    Returns:
        `list[str]`: the admitted file names, sorted.

    Example:
        >>> upload_files("outputs/tiny-shapes/final")  # doctest: +SKIP
        ['README.md', 'chat_template.jinja', 'config.json', ..., 'model.safetensors', 'modeling_hive.py', ...]
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} has no config.json; pass the folder of a saved HIVE model (e.g. <run>/final).")
    names = [name for name in (*MODEL_FILES, *PROCESSOR_FILES, CARD) if (model_dir / name).is_file()]
    return sorted({*names, *_weight_files(model_dir), *_code_files(model_dir)})


def dry_run(model_dir, out) -> list[str]:
    """
    Copy exactly the files `push_folder` would upload into `out` (a new or empty folder); nothing is uploaded.

    Args:
        model_dir (`str` or `os.PathLike`): the saved HIVE folder.
        out (`str` or `os.PathLike`): where the copy goes; it appears whole or not at all.

    Returns:
        `list[str]`: the copied file names.

    Example:
        >>> dry_run("outputs/tiny-shapes/final", "upload-preview")  # doctest: +SKIP
    """
    model_dir, out = Path(model_dir), Path(out)
    files = upload_files(model_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--dry-run folder {out} already exists and is not empty; choose a new folder.")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name in files:
            shutil.copy2(model_dir / name, partial / name)
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return files


def push_folder(
    model_dir,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
):
    """
    Create the Hub repository if it is missing and upload the folder's allow-listed files (see `upload_files`)
    with `HfApi.upload_folder`. The local folder is only read.

    The token is `token` when given, else `huggingface_hub`'s own (`HF_TOKEN`, or the one `hf auth login` stored);
    it is passed to the client only, never printed or written.

    Args:
        model_dir (`str` or `os.PathLike`): the saved HIVE folder.
        repo_id (`str`): the repository, `ORG/NAME`.
        private (`bool`, *optional*): create the repository private (an existing one keeps its visibility).
        revision (`str`, *optional*): the branch to push to; created from `main` when missing.
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
        commit_message (`str`, *optional*): the commit's title.
        token (`str`, *optional*): a Hub token; defaults to `huggingface_hub`'s.
        endpoint (`str`, *optional*): the Hub endpoint; defaults to `HF_ENDPOINT`, else huggingface.co.

    Returns:
        `huggingface_hub.CommitInfo` of the commit (its `pr_url` is set with `create_pr=True`).

    Raises:
        `ValueError`: the folder is not a loadable HIVE folder, or no token is available.
        `RuntimeError`: the Hub refused or could not be reached; the message names the repository, the endpoint
            and the cause.

    Example:
        >>> push_folder("outputs/tiny-shapes/final", "my-org/hive-tiny", private=True)  # doctest: +SKIP
        CommitInfo(commit_url='https://huggingface.co/my-org/hive-tiny/commit/...', ...)
    """
    model_dir = Path(model_dir)
    check_repo_id(repo_id)
    files = upload_files(model_dir)
    if CARD not in files:
        logger.warning("%s has no README.md; write its model card first with `hive card --model %s`.", model_dir, model_dir)
    if token is None and get_token() is None:
        raise ValueError("No Hugging Face token: log in with `hf auth login`, or set HF_TOKEN.")
    api = HfApi(endpoint=endpoint, token=token)
    step = "create_repo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            step = "create_branch"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        step = "upload_folder"
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=model_dir,
            allow_patterns=[glob.escape(name) for name in files],
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload HIVE model ({len(files)} files) with hive push",
            repo_type="model",
        )
    except Exception as error:
        raise RuntimeError(
            f"Pushing {model_dir} to {repo_id} at {api.endpoint} failed during {step}: {type(error).__name__}: {error}. "
            "Nothing was changed in the local folder."
        ) from error


# --- at the end of `hive train` ----------------------------------------------------------------------------------


def hub_settings(recipe, stages) -> dict | None:
    """
    The upload a recipe asks for: the `hub_*` settings of the last stage run whose arguments set `push_to_hub: true`.

    Called before training, so that a missing or malformed `hub_model_id` fails at once rather than after the last
    stage. The Trainer's own push stays off (it would upload checkpoints); `push_training_run` uploads `final/`.

    Args:
        recipe (`hive_vlm.training.recipe.HiveRecipe`): the run's recipe.
        stages (`list[int]`): the stages this run trains.

    Returns:
        `dict` of `push_folder` arguments (`repo_id`, `private`, `revision`, `token`), or `None` when no stage pushes.
    """
    asked = [stage for stage in sorted(stages) if getattr(recipe, f"stage{stage}").get("push_to_hub")]
    if not asked:
        return None
    if max(stages) == 1:
        raise ValueError("stage1.push_to_hub: stage 1 writes a vision encoder, not a HIVE model; set push_to_hub on stage 2 or 3.")
    stage = asked[-1]
    values = getattr(recipe, f"stage{stage}")
    repo_id = values.get("hub_model_id")
    if not repo_id:
        raise ValueError(f"stage{stage}.push_to_hub needs stage{stage}.hub_model_id: the repository, ORG/NAME.")
    check_repo_id(repo_id)
    return {
        "repo_id": repo_id,
        "private": values.get("hub_private_repo"),
        "revision": values.get("hub_revision"),
        "token": values.get("hub_token"),
    }


def push_training_run(recipe, run_dir, stages, endpoint: str | None = None):
    """
    Finish a `hive train` run: write its training record and the model card of `<run_dir>/final`, then upload
    `final/` through `push_folder` when a stage sets `push_to_hub` (see `hub_settings`).

    Args:
        recipe (`hive_vlm.training.recipe.HiveRecipe`): the run's recipe.
        run_dir (`str` or `os.PathLike`): the run's output folder.
        stages (`list[int]`): the stages this run trained.
        endpoint (`str`, *optional*): the Hub endpoint; defaults to `HF_ENDPOINT`, else huggingface.co.

    Returns:
        The upload's `CommitInfo`, or `None` when nothing was pushed.

    Example:
        >>> push_training_run(recipe, "outputs/tiny-shapes", [1, 2, 3])  # doctest: +SKIP
    """
    hub = hub_settings(recipe, stages)
    run_dir = Path(run_dir)
    write_training_record(run_dir, recipe)
    write_model_card(run_dir / "final", repo_id=hub["repo_id"] if hub else None)
    if hub is None:
        return None
    info = push_folder(run_dir / "final", **hub, endpoint=endpoint)
    logger.info("%s pushed to %s", run_dir / "final", info.pr_url or info.commit_url)
    return info


# --- command line -----------------------------------------------------------------------------------------------
