"""The three phases `hive bench` measures on HIVE and LLaVA side by side: prefill, decode and a stage-2 training step.

With `shared`, HIVE's shared-softmax mode at the same connections (`build_shared_softmax`) is measured in the same
rounds, under the name `shared_softmax`."""

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


def hive_sides(hive, shared=None) -> dict:
    """The HIVE models measured: `hive` (gated blocks) and, when given, `shared_softmax`."""
    return {"hive": hive, **({"shared_softmax": shared} if shared is not None else {})}


def measure_prefill(hive, llava, batch: BenchBatch, repeats: int, device, matmul_tasks: dict, shared=None) -> dict:
    """(a), (d) and (f): whole prefill (with the matmul probes in the same rounds), LLM-side prefill, the shared
    encoder and each fusion alone; cache bytes."""
    image_mask = None  # every sample has an image: the model then stores no mask either
    sides = hive_sides(hive, shared)
    features = {name: hive_image_key_values(model, batch, images=1) for name, model in sides.items()}
    hive_features = features["hive"][0]
    llava_embeds = llava_inputs_embeds(llava, batch, images=1)
    llava_vision_states = llava.model.vision_tower(batch.pixel_values, output_hidden_states=True).hidden_states[-2]

    def whole(model):
        return model(input_ids=batch.input_ids, pixel_values=batch.pixel_values, use_cache=True, logits_to_keep=1)

    def llava_whole():
        return llava(input_ids=batch.llava_input_ids, pixel_values=batch.pixel_values, use_cache=True, logits_to_keep=1)

    def llm_side(name):
        model = sides[name]
        cache = cache_with_image_key_values(model, features[name][1], image_mask)
        return timed(lambda: model(input_ids=batch.input_ids, cache=cache, use_cache=True, logits_to_keep=1), device)

    times = {
        "ttft": interleaved(
            {**{name: (lambda m=model: timed(lambda: whole(m), device)) for name, model in sides.items()},
             "llava": lambda: timed(llava_whole, device), **matmul_tasks},
            repeats,
        ),  # fmt: skip
        "llm_prefill": interleaved(
            {**{name: (lambda name=name: llm_side(name)) for name in sides},
             "llava": lambda: timed(lambda: llava(inputs_embeds=llava_embeds, use_cache=True, logits_to_keep=1), device)},
            repeats,
        ),  # fmt: skip
        "encoder": interleaved(
            {
                "hive": lambda: timed(lambda: hive.model.encode_image(batch.pixel_values), device),
                "llava": lambda: timed(lambda: llava.model.vision_tower(batch.pixel_values, output_hidden_states=True), device),
            },
            repeats,
        ),
        "fusion": interleaved(
            {
                **{name: (lambda m=model: timed(lambda: hive_fusion(m, hive_features), device)) for name, model in sides.items()},
                "llava": lambda: timed(lambda: llava.model.multi_modal_projector(llava_vision_states), device),
            },
            repeats,
        ),
    }
    kv_bytes = {**{name: cache_bytes(whole(model)[CACHE_NAME]) for name, model in sides.items()}, "llava": cache_bytes(llava_whole()[CACHE_NAME])}
    return {"times": times, "kv_cache_bytes": kv_bytes}


def prefill_for_decode(model, batch: BenchBatch, images: int, is_llava: bool):
    """A batch-1 prefill holding `images` images' worth of tokens, as the decode measures start from: the cache, the
    first generated token and (HIVE) the tiled vision features. HIVE's LLM side runs on precomputed image keys/values;
    LLaVA on its merged embeddings."""
    if is_llava:
        out = model(inputs_embeds=llava_inputs_embeds(model, batch, images), use_cache=True, logits_to_keep=1)
        return out[CACHE_NAME], out.logits.argmax(-1), None
    image_mask = None  # every sample has an image: the model then stores no mask either
    features, key_values = hive_image_key_values(model, batch, images)
    cache = cache_with_image_key_values(model, key_values, image_mask)
    token = model(input_ids=batch.input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)
    return cache, token, features


def measure_decode(hive, llava, batch: BenchBatch, images: int, steps: int, repeats: int, device, batch_size: int = 1, recompute: bool = False,
                   shared=None) -> dict:  # fmt: skip
    """(b), and (e) when `recompute`: seconds per decode step after a prefill holding `images` images' worth of tokens.

    Returns per-step times of both models at batch 1 (`hive`, `llava`) and, when `batch_size` > 1, with the same
    prefilled caches repeated `batch_size` times (`hive_batched`, `llava_batched`). `recompute` adds HIVE at batch 1
    with its cross-attention keys/values recomputed before every step from kept vision features (`hive_recompute`,
    against `hive_cached` timed in the same rounds) and from the pixels, encoder included (`hive_recompute_encoder`).
    """
    models, caches, tokens = {**hive_sides(hive, shared), "llava": llava}, {}, {}
    for name, model in models.items():
        caches[name], tokens[name], features = prefill_for_decode(model, batch, images, is_llava=name == "llava")
        if name == "hive":
            hive_features = features
    hive_cache, hive_token = caches["hive"], tokens["hive"]

    times = interleaved({name: (lambda name=name: decode_run(models[name], caches[name], tokens[name], steps, device)) for name in models}, repeats)
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
        for cache in caches.values():
            cache.batch_repeat_interleave(batch_size)
        batched = {name: token.repeat_interleave(batch_size, 0) for name, token in tokens.items()}
        tasks = {f"{name}_batched": (lambda name=name: decode_run(models[name], caches[name], batched[name], steps, device)) for name in models}
        times.update(interleaved(tasks, repeats))
    return times


def freeze_for_stage2(hives: dict, llava) -> dict:
    """Stage 2 on every side: LLM and encoder frozen; HIVE trains projectors and blocks, LLaVA its projector."""
    counts = {name: model.set_trainable(vision=False, projector=True, cross_attention=True, llm=False) for name, model in hives.items()}
    llava.requires_grad_(False)
    llava.model.multi_modal_projector.requires_grad_(True)
    return {
        **{name: count["total"]["trainable"] for name, count in counts.items()},
        "llava": sum(p.numel() for p in llava.parameters() if p.requires_grad),
    }


def measure_train_step(hive, llava, size: HiveBenchSize, repeats: int, device, dtype, seed: int, matmul_tasks: dict, shared=None) -> dict:
    """(c): forward + backward + AdamW step on one batch; time, and peak tensor memory of a warm step."""
    batch = bench_batch(size, size.train_batch_size, device=device, dtype=dtype, seed=seed + 1)
    hives = hive_sides(hive, shared)
    trainable = freeze_for_stage2(hives, llava)
    models = {**hives, "llava": llava}
    for model in models.values():
        model.train()
    hive_inputs = dict(input_ids=batch.input_ids, pixel_values=batch.pixel_values, labels=batch.input_ids)
    inputs = {**{name: hive_inputs for name in hives},
              "llava": dict(input_ids=batch.llava_input_ids, pixel_values=batch.pixel_values, labels=batch.llava_labels)}  # fmt: skip
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
    for model in models.values():
        model.eval()
    return {
        "times": times,
        "resident_bytes": resident,
        "peak_above_resident_bytes": above,
        "peak_bytes": {name: resident[name] + above[name] for name in models},
        "trainable_parameters": trainable,
        "hive_flops_counted_by_torch": counter.get_total_flops(),
    }


def stage2_step_maker(hive, llava, size: HiveBenchSize, device, dtype, seed: int, shared=None) -> Callable:
    """`make_step(name, batch_size) -> (step, optimizer)` for the stage-2 batch sweep: one forward + backward + AdamW
    step of that model on a fresh batch of that size (the same inputs as `measure_train_step`'s, at another size).
    The models must be frozen for stage 2 (`freeze_for_stage2`) and in train mode."""
    models = {**hive_sides(hive, shared), "llava": llava}

    def make_step(name: str, batch_size: int):
        batch = bench_batch(size, batch_size, device=device, dtype=dtype, seed=seed + 1)
        if name == "llava":
            inputs = dict(input_ids=batch.llava_input_ids, pixel_values=batch.pixel_values, labels=batch.llava_labels)
        else:
            inputs = dict(input_ids=batch.input_ids, pixel_values=batch.pixel_values, labels=batch.input_ids)
        model = models[name]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, optimizer

    return make_step


def decode_one_step(model, prefill) -> None:
    """One decode step from a `prefill_for_decode` result, its cache cropped back to the prefill after."""
    cache, token = prefill[:2]
    model(input_ids=token, use_cache=True, **{CACHE_NAME: cache})
    cache.crop(-1)
