"""Which transformers families HIVE builds on exactly, and which it refuses (issue 18), each family in its own process.

Each family is a tiny backbone built from a config and saved to a folder (an encoder with its own model class, a dual
or VLM checkpoint as the full model, an LLM with `AutoModelForCausalLM`), then joined to a fixed partner (every LLM to
one tiny ViT, every encoder to one tiny Llama) by `HiveForConditionalGeneration.from_backbones`. Its status is:

    exact        every check below passes;
    refused      HIVE raises `ValueError` while building, saying why (the message is recorded);
    error        anything else raises: a cryptic failure, a product defect;
    wrong        a check fails: a silently wrong model, a product defect;
    unbuildable  transformers itself cannot build, run or save the tiny backbone (no verdict on HIVE).

The checks, in eval mode: (1) closed gates give the bare LLM's logits; (2) open gates: two images give different
logits, one image twice the same; (3) greedy `generate` gives the same tokens with and without the cache; (4) another
process, which has never imported HIVE and cannot import this project, loads the saved folder through its remote code
and gives the same logits; (5) every projector, cross-attention and level-embedding parameter gets a nonzero gradient.

    $ python tests/family_compatibility.py run --kind text --family qwen2   # one family; prints one JSON line
    $ python tests/family_compatibility.py update                           # every family, 2 at a time; rewrites
                                                                            # tests/family_status.json and docs/compatibility.md

Each family runs in a process forked from a warm worker that has imported torch and transformers but never HIVE:
every family still gets a process of its own, without paying those imports (seconds each) again.
"""

import argparse
import dataclasses
import importlib
import json
import multiprocessing
import os
import queue
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models gain nothing from threads; workers run side by side

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import CONFIG_MAPPING, AutoModelForCausalLM  # noqa: E402


TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
STATUS_FILE = TESTS_DIR / "family_status.json"
DOC_FILE = REPO_ROOT / "docs" / "compatibility.md"
WORKERS = 2
TIMEOUT_S = 120  # for each of a family's two processes (build and check; reload)
STATUSES = ("exact", "refused", "error", "wrong", "unbuildable")
DEFECTS = ("error", "wrong")  # never acceptable, whatever is recorded
KINDS = ("text", "vision", "shared_softmax")  # shared_softmax: every LLM family again, in that cross_attention_mode
ATOL, RTOL = 1e-5, 1e-4

# --- the families ---------------------------------------------------------------------------------------------
# Sizes every family gets where its config has the field; each family's own entries come on top. Beyond size, a
# family keeps its config's defaults (Gemma2's soft-capping, Cohere's logit scale, ...): those are what users load.

TEXT_SIZES = dict(
    vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    intermediate_size=64, head_dim=16, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

# model_type -> its own config entries. Saved with AutoModelForCausalLM.
TEXT_FAMILIES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "mistral": {},
    "mixtral": dict(num_local_experts=4),
    "gemma": {},
    "gemma2": {},
    "gemma3_text": {},
    "gemma3n_text": dict(
        num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2, num_kv_shared_layers=2,
        vocab_size_per_layer_input=128, hidden_size_per_layer_input=8, laurel_rank=4, activation_sparsity_pattern=[0.0] * 4,
    ),
    "granite": {},
    "cohere": {},
    "cohere2": {},
    "falcon": {},
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8),
    "mamba": dict(state_size=8),
    "mamba2": dict(num_heads=4, head_dim=16, n_groups=1, state_size=8, chunk_size=8),
    "falcon_mamba": dict(state_size=8),
    "phi": {},
    "phi3": {},
    "gptj": dict(rotary_dim=8),
    "codegen": dict(rotary_dim=8),
    "llama4_text": dict(intermediate_size_mlp=64, num_local_experts=2, attention_chunk_size=16),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "gpt2": {},
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]], window_size=16),
    "gpt_neox": {},
    "gpt_bigcode": {},
    "bloom": {},
    "starcoder2": {},
    "olmo": {},
    "olmo2": {},
    "stablelm": {},
    "persimmon": {},
    "qwen2_moe": dict(num_experts=4, shared_expert_intermediate_size=32, **MOE),
    "deepseek_v3": dict(
        n_routed_experts=4, n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, **MOE,
    ),
    "glm": {},
    "glm4": {},
    "helium": {},
    "smollm3": {},
    "nemotron": {},
    "xglm": dict(ffn_dim=64),
    "biogpt": {},
    "jamba": dict(
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2, use_mamba_kernels=False,
    ),
    "bamba": dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8, attn_layer_indices=[1]),
    "zamba": dict(num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, use_mamba_kernels=False),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"], lru_width=32, attention_window_size=16),
    "lfm2": {},
}

VISION_SIZES = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
)
STAGES = dict(depths=[1, 1], image_size=32)  # multi-scale encoders: two stages
TOWER_TEXT = dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
VLM_TEXT = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)
QWEN_VL_TOWER = dict(depth=2, hidden_size=32, num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2)


@dataclasses.dataclass
class VisionFamily:
    model_type: str
    config: dict = dataclasses.field(default_factory=dict)  # on top of VISION_SIZES, for the encoder's own config
    model_class: str = "AutoModel"  # the checkpoint's class: a transformers name, or a path under transformers.models


VISION_FAMILIES = {
    "vit": VisionFamily("vit"),
    "vit_mae": VisionFamily("vit_mae"),
    "deit": VisionFamily("deit"),
    "beit": VisionFamily("beit"),
    "data2vec-vision": VisionFamily("data2vec-vision"),
    "ijepa": VisionFamily("ijepa"),
    "dinov2": VisionFamily("dinov2", dict(mlp_ratio=2)),
    "dinov2_with_registers": VisionFamily("dinov2_with_registers", dict(mlp_ratio=2)),
    "dinov3_vit": VisionFamily("dinov3_vit"),
    "aimv2_vision_model": VisionFamily("aimv2_vision_model"),
    "pixtral": VisionFamily("pixtral"),
    "mlcd_vision_model": VisionFamily("mlcd_vision_model"),
    "clip_vision_model": VisionFamily("clip_vision_model"),
    "clip": VisionFamily("clip", dict(vision_config=VISION_SIZES, text_config=TOWER_TEXT, projection_dim=16), "CLIPModel"),
    "siglip_vision_model": VisionFamily("siglip_vision_model"),
    "siglip": VisionFamily("siglip", dict(vision_config=VISION_SIZES, text_config=TOWER_TEXT), "SiglipModel"),
    "siglip2": VisionFamily(
        "siglip2", dict(vision_config={**VISION_SIZES, "num_patches": 16}, text_config=TOWER_TEXT), "Siglip2Model"
    ),
    "swin": VisionFamily("swin", dict(embed_dim=16, num_heads=[2, 2], window_size=4, patch_size=4, **STAGES)),
    "swinv2": VisionFamily(
        "swinv2", dict(embed_dim=16, num_heads=[2, 2], window_size=4, patch_size=4, pretrained_window_sizes=[0, 0], **STAGES)
    ),
    "convnext": VisionFamily("convnext", dict(hidden_sizes=[16, 32], num_stages=2, patch_size=4, **STAGES)),
    "convnextv2": VisionFamily("convnextv2", dict(hidden_sizes=[16, 32], num_stages=2, patch_size=4, **STAGES)),
    "dinov3_convnext": VisionFamily("dinov3_convnext", dict(hidden_sizes=[16, 32], **STAGES)),
    "hiera": VisionFamily(
        "hiera",
        dict(
            embed_dim=16, image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], depths=[1, 1],
            num_heads=[1, 2], num_query_pool=1, masked_unit_size=[8, 8], masked_unit_attention=[True, False],
        ),
    ),
    "resnet": VisionFamily("resnet", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")),
    "qwen2_vl_vision": VisionFamily(
        "qwen2_vl_vision", dict(embed_dim=32, **QWEN_VL_TOWER), "qwen2_vl.modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel"
    ),
    # Full VLM checkpoints: the encoder is one part of them, under a prefix.
    "internvl": VisionFamily(
        "internvl",
        dict(
            vision_config={**VISION_SIZES, "image_size": [32, 32], "patch_size": [8, 8]},
            text_config=dict(model_type="qwen2", **VLM_TEXT), image_token_id=3,
        ),
        "AutoModelForImageTextToText",
    ),
    "idefics3": VisionFamily(
        "idefics3",
        dict(vision_config=VISION_SIZES, text_config=dict(model_type="llama", **VLM_TEXT), image_token_id=3),
        "AutoModelForImageTextToText",
    ),
    "smolvlm": VisionFamily(
        "smolvlm",
        dict(vision_config=VISION_SIZES, text_config=dict(model_type="llama", **VLM_TEXT), image_token_id=3),
        "AutoModelForImageTextToText",
    ),
    "qwen2_5_vl": VisionFamily(
        "qwen2_5_vl",
        dict(
            vision_config=dict(
                intermediate_size=64, out_hidden_size=32, window_size=16, fullatt_block_indexes=[1], **QWEN_VL_TOWER
            ),
            text_config=dict(
                model_type="qwen2_5_vl_text", **VLM_TEXT,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 2, 4]),
            ),
            image_token_id=3, video_token_id=4, vision_start_token_id=5, vision_end_token_id=6,
        ),
        "AutoModelForImageTextToText",
    ),
}

FIXED_VISION = "vit"  # every LLM family is joined to this encoder
FIXED_TEXT = "llama"  # every encoder family to this LLM


def families() -> list[tuple[str, str]]:
    """Every (kind, family) the table holds, LLMs first."""
    text = [("text", name) for name in TEXT_FAMILIES]
    return text + [("vision", name) for name in VISION_FAMILIES] + [("shared_softmax", name) for name in TEXT_FAMILIES]


def model_type(kind: str, family: str) -> str:
    return VISION_FAMILIES[family].model_type if kind == "vision" else family


def is_installed(kind: str, family: str) -> bool:
    return model_type(kind, family) in CONFIG_MAPPING


# --- building the backbones -------------------------------------------------------------------------------------


def config_fields(config_class) -> set[str]:
    """The names a config class takes: its dataclass fields and its attribute aliases (GPT-2's `hidden_size`)."""
    return {field.name for field in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))


def tiny_config(model_type: str, sizes: dict, own: dict):
    """`model_type`'s config with the `sizes` its class knows, then `own`. No stray attributes: a family without
    grouped heads (GPT-2) would otherwise carry `num_key_value_heads` into HIVE. Aliases are resolved first, so that
    Swin's own `num_heads` list is not overwritten through `num_attention_heads`."""
    config_class = CONFIG_MAPPING[model_type]
    known, aliases = config_fields(config_class), getattr(config_class, "attribute_map", {})
    kwargs = {aliases.get(key, key): value for key, value in sizes.items() if key in known}
    kwargs.update({aliases.get(key, key): value for key, value in own.items()})
    return config_class(**kwargs)


def tiny_vision_config(family: VisionFamily):
    own = dict(family.config)
    vision_config = own.pop("vision_config", None)
    if vision_config is None:
        return tiny_config(family.model_type, VISION_SIZES, own)
    # A dual-encoder or VLM checkpoint: its own sub-config classes take the dicts.
    return CONFIG_MAPPING[family.model_type](vision_config=vision_config, **own)


def save_text_backbone(family: str, folder: Path) -> str:
    """Saves the tiny causal LM of `family` after one forward; returns its class name."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, TEXT_SIZES, TEXT_FAMILIES[family])).eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5]]))
    model.save_pretrained(folder)
    return type(model).__name__


def save_vision_backbone(family: str, folder: Path) -> str:
    """Saves the tiny encoder (or dual/VLM checkpoint) of `family` with its model class; returns the class name."""
    torch.manual_seed(0)
    spec = VISION_FAMILIES[family]
    module, _, name = spec.model_class.rpartition(".")
    model_class = getattr(importlib.import_module(f"transformers.models.{module}") if module else transformers, name)
    config = tiny_vision_config(spec)
    model = model_class.from_config(config) if spec.model_class.startswith("Auto") else model_class._from_config(config)
    model.save_pretrained(folder)
    return type(model).__name__


def encoder_config(config):
    """The encoder's own config inside a dual-encoder or VLM config."""
    return getattr(config, "vision_config", None) or config


def encoder_depth(config) -> int:
    """Layers (single-scale encoders) or stages (multi-scale ones) of an encoder config."""
    for name in ("num_hidden_layers", "depth", "num_stages"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return len(config.depths)


def image_batch(vision_config, seed: int, batch: int = 2) -> torch.Tensor:
    """Random images of the size the encoder config states (224 when it states none), (B, C, H, W)."""
    size = getattr(vision_config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    channels = getattr(vision_config, "num_channels", 3)
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


# --- one family -------------------------------------------------------------------------------------------------
# Both steps run in forked copies of a process that has imported torch and transformers but never HIVE: a child per
# family builds and checks (1-3, 5); a second child, which cannot import this project, reloads the saved folder through
# its remote code (4), as a Hub user's fresh process would. Forking saves each of them the seconds of those imports.


class WrongModel(Exception):
    """A check failed: HIVE built a model that silently computes something else."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise WrongModel(message)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.shape == b.shape else float("inf")


def fusion_parameters(model) -> dict:
    """The parameters HIVE adds: projectors, cross-attention blocks and, in `all_levels` mode, the level embeddings."""
    named = {f"model.multi_modal_projectors.{n}": p for n, p in model.model.multi_modal_projectors.named_parameters()}
    named.update({f"model.cross_attention_layers.{n}": p for n, p in model.model.cross_attention_layers.named_parameters()})
    if model.model.level_embeddings is not None:
        named["model.level_embeddings"] = model.model.level_embeddings
    return named


def check_model(model, work: Path) -> None:
    """Checks 1, 2, 3 and 5, then saves the model (`work/hive`) and its inputs and logits (`work/expected.pt`) for
    check 4. Raises WrongModel on the first check that fails."""
    model.eval()
    input_ids = torch.randint(3, model.config.text_config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    images, other_images = (image_batch(model.config.vision_config, seed) for seed in (1, 2))

    # (1) closed gates (shared_softmax, which has none: no image): the bare LLM's logits
    gates = {name: p for name, p in model.named_parameters() if name.endswith("_gate")}
    shared_softmax = model.config.cross_attention_mode == "shared_softmax"
    if not shared_softmax:
        expect(len(gates) > 0 and all(not p.any() for p in gates.values()), f"a fresh model's gates are not all 0: {sorted(gates)}")
    llm = AutoModelForCausalLM.from_pretrained(work / "text").eval()
    with torch.no_grad():
        hive_logits = model(input_ids=input_ids, pixel_values=None if shared_softmax else images).logits
        llm_logits = llm(input_ids=input_ids).logits
    expect(
        hive_logits.shape == llm_logits.shape and torch.allclose(hive_logits, llm_logits, atol=ATOL, rtol=RTOL),
        f"{'no image' if shared_softmax else 'closed gates'}: HIVE's logits differ from the bare LLM's by "
        f"{max_difference(hive_logits, llm_logits):.3g}",
    )

    # (2) open gates: the image matters, and only the image
    with torch.no_grad():
        for gate in gates.values():
            gate.fill_(0.5)
        logits = model(input_ids=input_ids, pixel_values=images).logits
        again = model(input_ids=input_ids, pixel_values=images).logits
        other = model(input_ids=input_ids, pixel_values=other_images).logits
    expect(torch.isfinite(logits).all(), "open gates: the logits are not all finite")
    expect(torch.equal(logits, again), f"open gates: one image gives logits {max_difference(logits, again):.3g} apart in two calls")
    expect(not torch.allclose(logits, other, atol=ATOL, rtol=RTOL), "open gates: two different images give the same logits")

    # (3) greedy generation: the same tokens with and without the cache
    greedy = dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=images,
        max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
    )
    cached, uncached = model.generate(**greedy, use_cache=True), model.generate(**greedy, use_cache=False)
    expect(torch.equal(cached, uncached), f"generate: {cached.tolist()} with the cache, {uncached.tolist()} without")

    # (5) every fusion parameter learns
    model.zero_grad()
    model(input_ids=input_ids, pixel_values=images, labels=input_ids).loss.backward()
    without = [name for name, p in fusion_parameters(model).items() if p.grad is None or not p.grad.any()]
    expect(not without, f"no gradient reaches {without}")

    # for (4)
    model.save_pretrained(work / "hive")
    torch.save({"input_ids": input_ids, "pixel_values": images, "logits": logits}, work / "expected.pt")


def raised_by_hive(error: BaseException) -> bool:
    """Whether the innermost frame that raised `error` is HIVE's own code (a deliberate refusal)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).parent.name == "modeling_hive"


def failure(status: str, error: BaseException, message: str | None = None) -> dict:
    lines = "".join(traceback.format_exception(error)).rstrip().splitlines()[-12:]
    return dict(status=status, message=message or f"{type(error).__name__}: {error}", traceback=lines)


def build_and_check(kind: str, family: str, work: Path) -> dict:
    """Saves both backbones, builds HIVE on them and runs checks 1-3 and 5: {class, status, message[, traceback]}, the
    status "checked" when all pass."""
    text_family, vision_family = (FIXED_TEXT, family) if kind == "vision" else (family, FIXED_VISION)
    try:
        text_class = save_text_backbone(text_family, work / "text")
        vision_class = save_vision_backbone(vision_family, work / "vision")
        vision_depth = encoder_depth(encoder_config(transformers.AutoConfig.from_pretrained(work / "vision")))
    except Exception as error:  # transformers' own doing: no verdict on HIVE
        return {"class": None, **failure("unbuildable", error)}
    result = {"class": vision_class if kind == "vision" else text_class}
    try:
        sys.path.insert(0, str(REPO_ROOT))
        from modeling_hive import HiveForConditionalGeneration  # here: a broken import is an error like any other

        pairs = [[0, 0], [vision_depth - 1, 1]]
        mode = "shared_softmax" if kind == "shared_softmax" else "gated"
        model = HiveForConditionalGeneration.from_backbones(
            str(work / "vision"), str(work / "text"), cross_attention_layers=pairs, cross_attention_mode=mode
        )
    except ValueError as error:
        if raised_by_hive(error):
            return {**result, "status": "refused", "message": str(error)}
        return {**result, **failure("error", error, f"ValueError (not raised by HIVE): {error}")}
    except Exception as error:
        return {**result, **failure("error", error)}
    if kind == "vision":
        result["encoder"] = type(model.model.vision_model).__name__  # the tower HIVE took from the checkpoint
    try:
        check_model(model, work)
    except WrongModel as error:
        return {**result, "status": "wrong", "message": str(error)}
    except Exception as error:
        return {**result, **failure("error", error)}
    return {**result, "status": "checked", "message": ""}


class BlockProject:
    """A meta-path finder that refuses this project's packages: only the saved folder's remote code can serve."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_hive", "hive_vlm"):
            raise ModuleNotFoundError(f"{name} is blocked: the project must not be importable here")
        return None


def reload_and_compare(work: Path) -> dict:
    """Check 4, in a process that has never imported HIVE: loads `work/hive` through its remote code and compares its
    logits with the ones saved next to it."""
    imported = sorted(name for name in sys.modules if name.split(".")[0] in ("modeling_hive", "hive_vlm"))
    if imported:
        raise RuntimeError(f"check 4 needs a process that never imported HIVE; this one has {imported}")
    sys.path[:] = [path for path in sys.path if Path(path or ".").resolve() not in (REPO_ROOT, TESTS_DIR)]
    sys.meta_path.insert(0, BlockProject())
    try:
        from transformers import AutoModelForImageTextToText

        expected = torch.load(work / "expected.pt", weights_only=True)
        model = AutoModelForImageTextToText.from_pretrained(work / "hive", trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(input_ids=expected["input_ids"], pixel_values=expected["pixel_values"]).logits
    except Exception as error:
        return failure("error", error, f"reloading in a fresh process: {type(error).__name__}: {error}")
    loaded = f"{type(model).__module__}.{type(model).__name__}"
    if not loaded.startswith("transformers_modules."):
        return dict(status="wrong", message=f"the saved folder loaded as {loaded}, not through its remote code")
    if logits.shape != expected["logits"].shape or not torch.allclose(logits, expected["logits"], atol=ATOL, rtol=RTOL):
        difference = max_difference(logits, expected["logits"])
        return dict(status="wrong", message=f"reloaded in a fresh process: logits differ by {difference:.3g}")
    return dict(status="exact", message="")


def send_result(connection, function, args) -> None:
    try:
        result = function(*args)
    except BaseException as error:  # anything the function did not classify
        result = failure("error", error)
    connection.send(result)
    connection.close()


def in_child(function, *args, timeout: float = TIMEOUT_S) -> dict:
    """`function(*args)` (which returns a dict) in a forked copy of this process; a crash or a timeout is an error."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=send_result, args=(sender, function, args))
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            return dict(status="error", message=f"{function.__name__} timed out after {timeout} s")
        return receiver.recv()
    except EOFError:
        process.join()
        return dict(status="error", message=f"{function.__name__} died (exit code {process.exitcode}) without a result")
    finally:
        if process.is_alive():
            process.kill()
        process.join()


def run_family(kind: str, family: str) -> dict:
    """Tries one family: {kind, family, model_type, class, status, message[, traceback], seconds}."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"hive-{family}-") as tmp:
        result = {"class": None, **in_child(build_and_check, kind, family, Path(tmp))}
        if result["status"] == "checked":
            result.update(in_child(reload_and_compare, Path(tmp)))
        result["message"] = result["message"].replace(tmp, "<tmp>")
    seconds = round(time.monotonic() - start, 1)
    return dict(kind=kind, family=family, model_type=model_type(kind, family), **result, seconds=seconds)


# --- all families -----------------------------------------------------------------------------------------------


def serve() -> None:
    """A warm worker for `run_all`: answers each `kind family` line on stdin with one JSON line. What the families
    print goes to stderr, so that stdout carries only the answers."""
    for module in ("transformers.modeling_utils", "transformers.generation.utils", "transformers.models.auto.modeling_auto"):
        importlib.import_module(module)  # the heavy imports, once here and inherited by every fork

    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        kind, family = line.split()
        answers.write(json.dumps(run_family(kind, family)) + "\n")
        answers.flush()


def start_worker(modules_cache: str, log) -> subprocess.Popen:
    # Its own cache of remote code: two workers never write the same module folder at once.
    environment = {**os.environ, "HF_MODULES_CACHE": modules_cache, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "serve"]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
    )


def run_all(selected: list[tuple[str, str]], workers: int = WORKERS) -> dict:
    """Runs the installed families of `selected` on `workers` warm workers; {(kind, family): result}."""
    pending = queue.SimpleQueue()
    for pair in selected:
        if is_installed(*pair):
            pending.put(pair)
    results = {}

    def drain(slot: int) -> None:
        with tempfile.TemporaryDirectory(prefix=f"hive-worker{slot}-") as tmp, open(Path(tmp) / "log", "w+") as log:
            worker = start_worker(str(Path(tmp) / "modules"), log)
            while True:
                try:
                    kind, family = pair = pending.get_nowait()
                except queue.Empty:
                    break
                try:
                    worker.stdin.write(f"{kind} {family}\n")
                    worker.stdin.flush()
                    answer = worker.stdout.readline()
                except BrokenPipeError:
                    answer = ""
                if answer:
                    results[pair] = json.loads(answer)
                    continue
                log.seek(0)
                tail = log.read().strip().splitlines()[-12:]
                results[pair] = dict(kind=kind, family=family, status="error", message="the worker died", traceback=tail)
                worker = start_worker(str(Path(tmp) / "modules"), log)
            worker.stdin.close()
            worker.wait()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(drain, range(workers)))
    return {pair: results[pair] for pair in selected if pair in results}


# --- the record: tests/family_status.json and docs/compatibility.md ----------------------------------------------


def load_status() -> dict:
    """The recorded statuses: {"transformers": version, "text": {family: entry}, "vision": {family: entry}}."""
    if not STATUS_FILE.exists():
        return {"transformers": None, **{kind: {} for kind in KINDS}}
    return json.loads(STATUS_FILE.read_text())


def write_status(results: dict) -> dict:
    """Merges `results` into the record (families not run keep their entry) and writes it."""
    record = {kind: {} for kind in KINDS} | load_status()
    record["transformers"] = transformers.__version__
    for (kind, family), result in results.items():
        keys = ("model_type", "class", "encoder", "status", "message", "traceback")
        record[kind][family] = {key: result[key] for key in keys if result.get(key) is not None}
    for kind in KINDS:
        record[kind] = {family: record[kind][family] for family in sorted(record[kind])}
    STATUS_FILE.write_text(json.dumps(record, indent=1) + "\n")
    return record


def comparable(message: str) -> str:
    """A refusal message without the numbers that may move between machines (`differ by up to 0.123`)."""
    return re.sub(r"\d+\.\d+(e-?\d+)?", "<number>", message or "")


DOC_INTRO = """# Compatibility: transformers families

Which transformers families HIVE builds on, observed with transformers {version} by
`tests/family_compatibility.py` and asserted by `tests/test_family_compatibility.py`: a family whose status changes
fails that test. Each family is a tiny backbone built from its config (the family's own defaults at small sizes: two
layers or stages, width 16 to 32, a vocabulary of 128; the few entries a family needs beyond that are in the tables of
`tests/family_compatibility.py`), saved with its own model class (a dual-encoder or VLM checkpoint as the full model),
and joined by `HiveForConditionalGeneration.from_backbones` to a fixed partner: every LLM family to one tiny ViT,
every encoder family to one tiny Llama, with cross-attention at `[[0, 0], [last encoder level, 1]]`.

- **exact**: all five checks pass, in eval mode. (1) With closed gates (a fresh model) HIVE gives the bare LLM's
  logits; (2) with open gates two images give different logits and one image twice the same; (3) greedy `generate`
  gives the same tokens with and without the cache; (4) another process, which has never imported HIVE and cannot
  import this project, loads the saved folder through its remote code
  (`AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)`) and gives the same logits;
  (5) every projector and cross-attention parameter gets a nonzero gradient.
- **refused**: HIVE raises `ValueError` while building the model, with the reason shown; nothing is built.
- **error** / **wrong**: an exception that is not such a refusal, or a check that fails. Neither is acceptable: the
  test fails on them whatever is recorded, and each is a defect to fix.
- Families that transformers itself cannot build at these sizes are listed after each table, untried; families the
  installed transformers lacks are skipped.

Re-record after a change (every family, two at a time: about a minute on 2 cores):

    python tests/family_compatibility.py update
    python tests/family_compatibility.py update --family qwen2 --family swin   # only these

"""


DOC_NOTES = """
## How HIVE serves each kind of backbone

- **Single-scale encoders** (ViT, DeiT, BEiT, DINOv2, SigLIP, CLIP, ...): a level is a layer, `hidden_states[i + 1]`,
  all of one width.
- **Multi-scale encoders** (Swin, SwinV2, ConvNeXt, ConvNeXtV2, DINOv3-ConvNeXt, Hiera, ResNet): a level is a stage.
  Each stage's width is read from one forward on the meta device, and each gets its own projector into the LLM
  width. Feature maps `(B, C, H, W)` are flattened row by row to `H * W` tokens. Swin's stage output is the one after
  its patch merging (twice the width, half the resolution), except the last stage's. Hiera's tokens come in its
  unrolled order, which does not matter: image keys carry no positions, and attention over them does not depend on
  their order.
- **Default pairs for stage-based encoders.** `num_cross_attention_layers` (4) pairs are spread over both depths,
  ending at the last stage and the last LLM layer. A 4-stage encoder with a 24-layer LLM gets
  `[[0, 5], [1, 11], [2, 17], [3, 23]]`: the fine early stages (edges, textures) feed early LLM layers, and the
  coarse last stage (semantics) feeds the last one.
- **ViT-MAE.** It masks 75% of its patches at random in every forward, in eval mode too. Inside HIVE its mask ratio
  is 0 (`HiveConfig` sets it), and `HiveModel.encode_image` passes ascending `noise` (MAE sorts the noise to pick and
  order patches), so every patch is kept, in its own place.
- **Dual encoders and VLM checkpoints** (CLIP, SigLIP, InternVL, Idefics3, SmolVLM). `from_backbones` loads the
  checkpoint once, finds the vision tower by its weight names (the one prefix under which all of the encoder class's
  weights sit), and drops the rest.
- **Weights HIVE does not use** (a pooler, a classifier head, an MIM decoder, layers above the deepest connected
  one) may be missing from an encoder checkpoint. They are reported once at info level and stay frozen.
- **LLMs.** Cross-attention runs as a pre-hook on the decoder layers. So an LLM must pass its forward's keyword
  arguments on to them, with hidden states of shape (batch, tokens, width). One two-token forward at build time
  checks both. Falcon, Bloom, GPT-Neo and Mamba drop the arguments; Gemma3n's layers take its AltUp streams, (streams,
  batch, tokens, width).
- **Logits as the LLM computes them.** At build time, HIVE measures how the LLM's own causal-LM class turns its last
  hidden state into logits. That class is built on the meta device around HIVE's LLM and head, and the head is scaled
  to logits near 100, where soft-capping shows. Where the head alone gives them, HIVE applies its head. Where the
  forward does more (Gemma2's and RecurrentGemma's final soft-capping, Cohere's and Granite's scaling), HIVE runs that
  forward itself on the hidden states it computed: no per-family rule is written. Anything else is refused. A biased
  output layer (Phi, GPT-J, CodeGen) is refused when loading.
- **State-space and hybrid LLMs** (Mamba2, Jamba, Bamba, Falcon-H1, LFM2) work. HIVE's image layers sit after the
  LLM's own cache layers, and they do not change which mask generation builds.
- **`cross_attention_mode='shared_softmax'`** (the paper authors' fusion, its own table): every LLM family again, with
  the image keys joined to the connected layers' own self-attention. There are no gates, so check 1 is the input
  without an image, which must give the bare LLM's logits, and check 2 needs no opening. It needs more of the LLM than
  the gated blocks: sdpa attention (Gemma2 runs eager), an `input_layernorm` and separate `k_proj`/`v_proj` in the
  connected layers (GPT-2, Phi-3, OLMo-2 and the state-space layers have none), an attention that passes its keyword
  arguments on to transformers' attention function (StableLM, Nemotron do not), and a rotary embedding giving
  `(cos, sin)` (Llama 4's is complex). Each of these is refused when the model is built, with the reason.
- **Check 4's fresh process** is forked from a worker that imported torch and transformers, but never HIVE, and
  that is blocked from importing this project. Only the saved folder's remote code can serve.
"""


def doc_table(entries: dict, title: str, header: str) -> str:
    rows = [f"## {title}\n", f"| family | {header} | status | reason or notes |", "|---|---|---|---|"]
    tried = {family: entry for family, entry in entries.items() if entry["status"] != "unbuildable"}
    for family, entry in tried.items():
        message = " ".join(entry.get("message", "").split()).replace("|", "\\|")
        if not message and entry.get("encoder") not in (None, entry.get("class")):
            message = f"encoder: `{entry['encoder']}`"
        status = entry["status"] if entry["status"] not in DEFECTS else f"**{entry['status']}** (defect)"
        rows.append(f"| `{family}` | `{entry.get('class')}` | {status} | {message} |")
    counts = {status: sum(e["status"] == status for e in tried.values()) for status in STATUSES}
    rows.append(f"\n{len(tried)} families: {', '.join(f'{count} {status}' for status, count in counts.items() if count)}.")
    untried = {family: entry for family, entry in entries.items() if entry["status"] == "unbuildable"}
    if untried:
        rows.append("\nNot tried, as transformers cannot build or save their tiny backbone:\n")
        rows += [f"- `{family}`: {' '.join(entry['message'].split())[:160]}" for family, entry in untried.items()]
    return "\n".join(rows) + "\n"


def write_docs(record: dict) -> None:
    DOC_FILE.write_text(
        DOC_INTRO.format(version=record["transformers"])
        + doc_table(record["text"], "LLM (causal-LM) families", "transformers class (joined to a tiny ViT)")
        + "\n"
        + doc_table(record["vision"], "Encoder families", "checkpoint class (joined to a tiny Llama)")
        + "\n"
        + doc_table(record["shared_softmax"], "LLM families in `cross_attention_mode='shared_softmax'`",
                    "transformers class (joined to a tiny ViT)")  # fmt: skip
        + DOC_NOTES
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="try one family (in two forks of this process); print one JSON line")
    run_parser.add_argument("--kind", choices=KINDS, required=True)
    run_parser.add_argument("--family", required=True)
    update_parser = commands.add_parser("update", help="try every family (or those named) and rewrite the record and docs")
    update_parser.add_argument("--family", action="append", help="only this family (repeatable); the others keep their entry")
    commands.add_parser("serve", help="internal: the warm worker `update` and the test run families on")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(json.dumps(run_family(args.kind, args.family)))
        return
    if args.command == "serve":
        serve()
        return
    selected = [pair for pair in families() if not args.family or pair[1] in args.family]
    start = time.monotonic()
    results = run_all(selected)
    for (kind, family), result in results.items():
        print(f"{kind:6s} {family:24s} {result['status']:11s} {result.get('seconds', '-')!s:>5s} s  {result['message'][:100]}")
    write_docs(write_status(results))
    print(f"{len(results)} families in {time.monotonic() - start:.0f} s; wrote {STATUS_FILE} and {DOC_FILE}")


if __name__ == "__main__":
    main()
