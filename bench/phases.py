"""The three phases `hive bench` measures on HIVE and LLaVA side by side: prefill, decode and a stage-2 training step."""

from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modeling_hive.compatibility_hive import CACHE_NAME

from .measures import interleaved, peak_allocated_during, resident_training_bytes, timed
from .models import BenchBatch, bench_batch, cache_bytes, cache_with_image_key_values, tile_image_tokens
from .sizes import HiveBenchSize


def llava_inputs_embeds(llava, batch: BenchBatch, images: int) -> torch.Tensor:
    """LLaVA's merged prompt: text embeddings around the projected image features (one image's, tiled `images` times)."""
    image_features = llava.model.get_image_features(pixel_values=batch.pixel_values).pooler_output  # B x (N, D)
    image_features = tile_image_tokens(torch.stack(list(image_features)), images)
    embed = llava.get_input_embeddings()
    prefix, text = batch.input_ids[:, : batch.prefix_tokens], batch.input_ids[:, batch.prefix_tokens :]
    return torch.cat([embed(prefix), image_features.to(embed.weight.dtype), embed(text)], dim=1)


def hive_fusion(hive, levels):
    """HIVE's fusion alone: the selected encoder levels through the projectors into every block's image keys/values."""
    return hive.model.get_cross_attention_key_values(hive.model.project_levels(levels))


def hive_image_key_values(hive, batch: BenchBatch, images: int):
    """Per-block image keys/values for one image's selected encoder levels tiled `images` times along the token axis."""
    _, levels = hive.model.encode_image(batch.pixel_values)
    levels = tuple(tile_image_tokens(level, images) for level in levels)
    return levels, hive_fusion(hive, levels)


def decode_run(model, cache, token: torch.Tensor, steps: int, device, before_step: Callable[[], None] | None = None) -> float:
    """Seconds per step of `steps` greedy decode steps from `cache`, which is cropped back to its prefill length after."""

    def run():
        next_token = token
        for _ in range(steps):
            if before_step is not None:
                before_step()
            logits = model(input_ids=next_token, use_cache=True, **{CACHE_NAME: cache}).logits
            next_token = logits[:, -1:].argmax(-1)

    seconds = timed(run, device)
    cache.crop(-steps)
    return seconds / steps


def measure_prefill(hive, llava, batch: BenchBatch, repeats: int, device, matmul_tasks: dict) -> dict:
    """(a), (d) and (f): whole prefill (with the matmul probes in the same rounds), LLM-side prefill, the shared
    encoder and each fusion alone; cache bytes."""
    image_mask = None  # every sample has an image: the model then stores no mask either
    hive_features, hive_key_values = hive_image_key_values(hive, batch, images=1)
    llava_embeds = llava_inputs_embeds(llava, batch, images=1)
    llava_vision_states = llava.model.vision_tower(batch.pixel_values, output_hidden_states=True).hidden_states[-2]

    def hive_whole():
        return hive(input_ids=batch.input_ids, pixel_values=batch.pixel_values, use_cache=True, logits_to_keep=1)

    def llava_whole():
        return llava(input_ids=batch.llava_input_ids, pixel_values=batch.pixel_values, use_cache=True, logits_to_keep=1)

    def hive_llm_side():
        cache = cache_with_image_key_values(hive, hive_key_values, image_mask)
        return timed(lambda: hive(input_ids=batch.input_ids, cache=cache, use_cache=True, logits_to_keep=1), device)

    times = {
        "ttft": interleaved({"hive": lambda: timed(hive_whole, device), "llava": lambda: timed(llava_whole, device), **matmul_tasks}, repeats),
        "llm_prefill": interleaved(
            {"hive": hive_llm_side, "llava": lambda: timed(lambda: llava(inputs_embeds=llava_embeds, use_cache=True, logits_to_keep=1), device)},
            repeats,
        ),
        "encoder": interleaved(
            {
                "hive": lambda: timed(lambda: hive.model.encode_image(batch.pixel_values), device),
                "llava": lambda: timed(lambda: llava.model.vision_tower(batch.pixel_values, output_hidden_states=True), device),
            },
            repeats,
        ),
        "fusion": interleaved(
            {
                "hive": lambda: timed(lambda: hive_fusion(hive, hive_features), device),
                "llava": lambda: timed(lambda: llava.model.multi_modal_projector(llava_vision_states), device),
            },
            repeats,
        ),
    }
    kv_bytes = {"hive": cache_bytes(hive_whole()[CACHE_NAME]), "llava": cache_bytes(llava_whole()[CACHE_NAME])}
    return {"times": times, "kv_cache_bytes": kv_bytes}


def measure_decode(hive, llava, batch: BenchBatch, images: int, steps: int, repeats: int, device, batch_size: int = 1, recompute: bool = False) -> dict:
    """(b), and (e) when `recompute`: seconds per decode step after a prefill holding `images` images' worth of tokens.

    Returns per-step times of both models at batch 1 (`hive`, `llava`) and, when `batch_size` > 1, with the same
    prefilled caches repeated `batch_size` times (`hive_batched`, `llava_batched`). `recompute` adds HIVE at batch 1
    with its cross-attention keys/values recomputed before every step from kept vision features (`hive_recompute`,
    against `hive_cached` timed in the same rounds) and from the pixels, encoder included (`hive_recompute_encoder`).
    """
    image_mask = None  # every sample has an image: the model then stores no mask either
    hive_features, hive_key_values = hive_image_key_values(hive, batch, images)
    hive_cache = cache_with_image_key_values(hive, hive_key_values, image_mask)
    hive_token = hive(input_ids=batch.input_ids, cache=hive_cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)
    llava_out = llava(inputs_embeds=llava_inputs_embeds(llava, batch, images), use_cache=True, logits_to_keep=1)
    llava_cache, llava_token = llava_out[CACHE_NAME], llava_out.logits.argmax(-1)

    times = interleaved(
        {
            "hive": lambda: decode_run(hive, hive_cache, hive_token, steps, device),
            "llava": lambda: decode_run(llava, llava_cache, llava_token, steps, device),
        },
        repeats,
    )
    if recompute:
        cross_layers = hive_cache.layers[hive.config.text_config.num_hidden_layers :]

        def write_key_values(levels):
            for layer, (key_states, value_states) in zip(cross_layers, hive_fusion(hive, levels)):
                layer.write(key_states, value_states, layer.image_mask)

        def encode_and_write():
            write_key_values(tuple(tile_image_tokens(level, images) for level in hive.model.encode_image(batch.pixel_values)[1]))

        encoder_steps = min(2, steps)  # each step runs the whole encoder: a few are enough for a per-step time
        times.update(
            interleaved(
                {
                    "hive_cached": lambda: decode_run(hive, hive_cache, hive_token, steps, device),
                    "hive_recompute": lambda: decode_run(hive, hive_cache, hive_token, steps, device, lambda: write_key_values(hive_features)),
                    "hive_recompute_encoder": lambda: decode_run(hive, hive_cache, hive_token, encoder_steps, device, encode_and_write),
                },
                repeats,
            )
        )
    if batch_size > 1:
        for cache in (hive_cache, llava_cache):
            cache.batch_repeat_interleave(batch_size)
        hive_tokens, llava_tokens = hive_token.repeat_interleave(batch_size, 0), llava_token.repeat_interleave(batch_size, 0)
        times.update(
            interleaved(
                {
                    "hive_batched": lambda: decode_run(hive, hive_cache, hive_tokens, steps, device),
                    "llava_batched": lambda: decode_run(llava, llava_cache, llava_tokens, steps, device),
                },
                repeats,
            )
        )
    return times


def freeze_for_stage2(hive, llava) -> dict:
    """Stage 2 on both sides: LLM and encoder frozen; HIVE trains projectors and blocks, LLaVA its projector."""
    hive_counts = hive.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)
    llava.requires_grad_(False)
    llava.model.multi_modal_projector.requires_grad_(True)
    return {
        "hive": hive_counts["total"]["trainable"],
        "llava": sum(p.numel() for p in llava.parameters() if p.requires_grad),
    }


def measure_train_step(hive, llava, size: HiveBenchSize, repeats: int, device, dtype, seed: int, matmul_tasks: dict) -> dict:
    """(c): forward + backward + AdamW step on one batch; time, and peak tensor memory of a warm step."""
    batch = bench_batch(size, size.train_batch_size, device=device, dtype=dtype, seed=seed + 1)
    trainable = freeze_for_stage2(hive, llava)
    hive.train()
    llava.train()
    inputs = {
        "hive": dict(input_ids=batch.input_ids, pixel_values=batch.pixel_values, labels=batch.input_ids),
        "llava": dict(input_ids=batch.llava_input_ids, pixel_values=batch.pixel_values, labels=batch.llava_labels),
    }
    models = {"hive": hive, "llava": llava}
    optimizers = {name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5) for name, model in models.items()}

    def step(name):
        loss = models[name](**inputs[name]).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    times = interleaved({**{name: (lambda name=name: timed(lambda: step(name), device)) for name in models}, **matmul_tasks}, repeats)
    resident = {name: resident_training_bytes(models[name], optimizers[name]) for name in models}
    above = {name: peak_allocated_during(lambda name=name: step(name), device) for name in models}
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:  # math attention: matmuls torch can count
        step("hive")
    hive.eval()
    llava.eval()
    return {
        "times": times,
        "resident_bytes": resident,
        "peak_above_resident_bytes": above,
        "peak_bytes": {name: resident[name] + above[name] for name in models},
        "trainable_parameters": trainable,
        "hive_flops_counted_by_torch": counter.get_total_flops(),
    }
