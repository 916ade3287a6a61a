"""The transfer study: every pre-training variant's encoder carried into transformers' LLaVA, trained and compared
(`hive transfer`'s library; the command and its phases are in `cli`)."""

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hive_vlm.ablation.fusions import FUSIONS, HiveFusionSettings
from hive_vlm.ablation.report import budget_setting, llm_setting, write_report
from hive_vlm.ablation.run import quiet, run_isolated
from hive_vlm.ablation.settings import HiveStudySettings
from hive_vlm.ablation.shared import HiveStudyRun, prepare_shared, shared_path
from hive_vlm.ablation.study import run_ablation
from hive_vlm.files import atomic_folder, write_atomically, write_json_atomic
from modeling_hive import HiveProcessor
from modeling_hive.backbones_hive import load_vision_backbone

from .settings import HiveTransferSettings


logger = logging.getLogger(__name__)


def transfer_llm(recipe, transfer: HiveTransferSettings, shared: Path, out: Path) -> str:
    """The LLM every encoder is transferred with: `transfer.text_model`; or `transfer.text_config` built with the
    pre-training's tokenizer and pretrained by the recipe's stage 0 (when it has one) in `out`; or the proxy LLM."""
    meta = json.loads((shared / "meta.json").read_text())
    if transfer.text_model:
        check_same_tokenizer(transfer.text_model, shared)
        return transfer.text_model
    if transfer.text_config is None:
        return shared_path(shared, meta["text"])
    built_from = json.loads(json.dumps({"text_config": transfer.text_config, "stage0": recipe.stage0, "seed": recipe.seed}))
    record = out / "transfer_llm.json"
    if record.is_file() and json.loads(record.read_text()) != built_from:
        raise ValueError(f"{out} holds a transfer LLM built from another text_config or stage 0; pass a new --out (or delete it).")
    if not (out / "processor").is_dir():  # the same tokenizer as pre-training, so every data file reads the same
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared / "processor", out / "processor")
        write_json_atomic(record, built_from)
    model = dataclasses.replace(recipe.model, text_model=None, text_config=transfer.text_config)
    run = HiveStudyRun(dataclasses.replace(recipe, model=model), out, resume=True)
    if recipe.stage0 is not None:
        run.run(stages=[0])
    return run.llm_source()


def check_same_tokenizer(text_model: str, shared: Path) -> None:
    """Every data file was tokenised by the pre-training's tokenizer: a transfer LLM must read the same ids."""
    ours = HiveProcessor.from_pretrained(shared / "processor").tokenizer.get_vocab()
    theirs = AutoTokenizer.from_pretrained(text_model).get_vocab()
    if not set(theirs) <= set(ours) or any(ours[token] != index for token, index in theirs.items()):
        raise ValueError(f"transfer.text_model: {text_model}'s tokenizer is not the pre-training's, and every study file is "
                         "tokenised by that one; transfer into an LLM with the same tokenizer, or give transfer.text_config "
                         "(built on the pre-training's tokenizer).")  # fmt: skip


def encoder_of(variant: str, seed: int, out: Path, shared: Path, meta: dict) -> str:
    """The folder of `variant`'s encoder for `seed`. `none` is the recipe's encoder as built, or as loaded alone from
    its checkpoint (the tower of a dual encoder or a VLM), saved once into `shared/backbones/vision-initial`."""
    if variant in FUSIONS:
        return str(out / "pretraining" / "runs" / f"{variant}-seed{seed}" / "encoder")
    if variant == "mim-only":
        return shared_path(shared, meta["vision"])
    if (shared / "backbones" / "vision").is_dir():
        return str(shared / "backbones" / "vision")
    folder = shared / "backbones" / "vision-initial"
    if not folder.is_dir():
        encoder, _ = load_vision_backbone(meta["recipe"]["model"]["vision_model"])
        with atomic_folder(folder) as written:
            encoder.save_pretrained(written)
            HiveProcessor.from_pretrained(shared / "processor").image_processor.save_pretrained(written)
    return str(folder)


def encoder_digest(folder: str) -> str:
    """SHA-256 (16 hex digits) of an encoder folder's weights: a kept transfer run counts only for the same encoder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def run_transfer(recipe, study: HiveStudySettings, transfer: HiveTransferSettings, out, isolate: bool = True,
                 threads: int | None = None) -> dict:
    """Pre-trains every fusion variant's encoder (`hive ablate`), transfers every variant with every seed (finished
    runs are kept), and writes the report. Returns the report's JSON content.

    Args:
        recipe (`HiveRecipe`), study (`HiveStudySettings`), transfer (`HiveTransferSettings`): `load_transfer`'s.
        out (`str` or `os.PathLike`): the study's folder.
        isolate (`bool`): one process per run (honest per-run peak memory).
        threads (`int`, *optional*): torch threads per run.

    Example:
        >>> report = run_transfer(*load_transfer("recipes/tiny-shapes.yaml", quick=True), "/tmp/transfer")  # doctest: +SKIP
        >>> sorted(report["aggregate"])  # doctest: +SKIP
    """
    quiet()
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    started = time.perf_counter()
    fusions = [variant for variant in transfer.variants if variant in FUSIONS]
    pretraining = dataclasses.replace(study, fusions=fusions, seeds=transfer.seeds)
    shared = out / "pretraining" / "shared"
    if fusions:
        print(f"[transfer] pre-training {fusions} with seeds {transfer.seeds} in {out / 'pretraining'}", flush=True)
        pretrained = run_ablation(recipe, pretraining, out / "pretraining", isolate=isolate, threads=threads)
    else:
        prepare_shared(recipe, pretraining, shared)
        pretrained = {"aggregate": {}}
    meta = json.loads((shared / "meta.json").read_text())
    llm = transfer_llm(recipe, transfer, shared, out / "transfer-llm")
    print(f"[transfer] transfer LLM: {llm}", flush=True)
    runs = []
    for seed in transfer.seeds:
        for variant in transfer.variants:
            run_dir = out / "transfer" / f"{variant}-seed{seed}"
            encoder = encoder_of(variant, seed, out, shared, meta)
            spec = {"variant": variant, "seed": seed, "encoder": encoder, "encoder_digest": encoder_digest(encoder), "llm": llm,
                    "shared": str(shared), "out": str(run_dir), "transfer": dataclasses.asdict(transfer), "eval": study.eval,
                    "threads": threads}  # fmt: skip
            if (run_dir / "result.json").is_file():
                kept = json.loads((run_dir / "result.json").read_text())
                if _transfer_identity(kept) != _transfer_identity(json.loads(json.dumps(spec))):
                    raise ValueError(f"{run_dir} holds a transfer with another encoder, LLM or settings; pass a new --out (or "
                                     "delete that folder).")  # fmt: skip
                runs.append(kept)
                continue
            print(f"[transfer] {variant} seed {seed} (t={time.perf_counter() - started:.0f}s)", flush=True)
            runs.append(run_isolated("hive_vlm.transfer.run:transfer_encoder", spec, isolate))
    compared = HiveStudySettings(name=recipe.name, fusions=list(transfer.variants), seeds=transfer.seeds, stage2=transfer.stage2,
                                 stage3=transfer.stage3, eval=study.eval,
                                 fusion=HiveFusionSettings(flat_vision_feature_layer=transfer.vision_feature_layer),
                                 train_llm=transfer.train_llm)  # fmt: skip
    report = write_report(out, compared, meta, runs, stem="transfer", title="Transfer into LLaVA", compared="Pre-training variants",
                          show_readouts=False)  # both readouts are listed with the pre-training settings below
    cost = pretraining_cost(pretrained, transfer.variants)
    report["pretraining_cost"] = cost
    # "study" above holds the transfer's own settings; how the encoders were pre-trained (pretrain_llm, budgets, ...)
    report["pretraining_study"] = dataclasses.asdict(pretraining)
    write_json_atomic(out / "transfer.json", report)
    lines = ["", "## Pre-training cost (seconds per step through the proxy LLM, median; mean over seeds)", "",
             "| variant | stage 2 | stage 3 |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {variant} | {row['stage2']} | {row['stage3']} |" for variant, row in cost.items()]
    lines += pretraining_settings(pretraining, pretrained, runs)
    write_atomically(out / "transfer.md", (out / "transfer.md").read_text() + "\n".join(lines) + "\n")
    print(f"[transfer] report: {out / 'transfer.md'} ({time.perf_counter() - started:.0f}s)", flush=True)
    return report


def _transfer_identity(run: dict) -> dict:
    """What one transfer run depends on: its encoder's weights, the LLM, the transfer and evaluation settings."""
    settings = {k: v for k, v in run["transfer"].items() if k not in ("variants", "seeds", "default_transfer")}
    return {"encoder": run.get("encoder_digest"), "llm": run["llm"], "transfer": settings, "eval": run.get("eval")}


def pretraining_settings(pretraining: HiveStudySettings, pretrained: dict, runs: list[dict]) -> list[str]:
    """transfer.md's account of how the encoders were pre-trained: the budgets, the LLM, shared-softmax's norm, and
    which encoder layers each variant's fusion read in pre-training and its LLaVA reads in transfer."""
    before = {run["fusion"]: run.get("readout") for run in pretrained.get("runs", [])}
    after = {run["variant"]: run.get("readout") for run in runs}
    lines = ["", "## Pre-training settings and the encoder layers each variant reads", "",
             f"{budget_setting(pretraining, pretrained.get('matched_budgets')) if pretrained.get('runs') else 'No fusion pre-trained.'} "
             f"In pre-training: {llm_setting(pretraining)}; shared-softmax norm `{pretraining.fusion.shared_softmax_norm}`.", "",
             "| variant | read in pre-training (0-based) | read in transfer |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {variant} | {before.get(variant) or '– (no fusion)'} | {after.get(variant) or '–'} |" for variant in after]
    return lines


def pretraining_cost(pretrained: dict, variants) -> dict:
    """Seconds per pre-training step of every fusion variant (none for `mim-only` and `none`, which have no fusion)."""
    table = pretrained.get("aggregate", {})
    return {variant: {stage: round(table[variant][f"seconds_per_step/{stage}"]["mean"], 4) if variant in table else "–"
                      for stage in ("stage2", "stage3")} for variant in variants}  # fmt: skip
