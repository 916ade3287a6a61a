"""`hive bench`: the toy run writes every result key as a number; the measured paths compute what the models compute.

No timing is asserted anywhere: timings depend on the machine.
"""

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hive_vlm.bench.benchmark import RESULT_KEYS, SHARED_SOFTMAX_TARGETS
from hive_vlm.bench.measures import largest_batch
from hive_vlm.bench.phases import decode_one_step, hive_image_key_values, llava_inputs_embeds, prefill_for_decode
from hive_vlm.bench.flops import hive_prefill_flops, hive_stage2_step_flops
from hive_vlm.bench.roofline import cache_bytes_per_position, decode_step_bytes, decode_weight_bytes
from hive_vlm.bench.models import bench_batch, build_models, build_shared_softmax, cache_bytes, cache_with_image_key_values
from hive_vlm.bench.sizes import BENCH_SIZES
from hive_vlm.cli import main
from modeling_hive.compatibility_hive import CACHE_NAME


TOY = BENCH_SIZES["toy"]
MODELS = ("hive", "llava", "shared_softmax")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture
def one_thread():
    """One torch thread (toy ops are too small to share; the benchmark's --threads sets it too), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_toy_run_writes_every_result_key_as_a_number(tmp_path, one_thread, capsys):
    # --compile with torch.compile's "eager" backend: dynamo traces every decode step as it would for inductor, without
    # inductor's code generation (tens of seconds per model on two cores); scripts/device_check_speed.sh runs inductor.
    out = tmp_path / "bench" / "toy.json"
    arguments = ["bench", "--size", "toy", "--repeats", "1", "--threads", "1", "--device", "cpu", "--out", str(out)]
    assert main([*arguments, "--compile", "--compile-backend", "eager", "--sweep"]) == 0
    result = json.loads(out.read_text())

    numeric_top_level = {key for key, value in result.items() if not isinstance(value, (dict, list, str))}
    assert numeric_top_level == set(RESULT_KEYS)
    for key in RESULT_KEYS:
        assert is_number(result[key]) and result[key] > 0, (key, result[key])
    for measure, sides in result["medians_s"].items():
        assert sides and all(is_number(seconds) and seconds > 0 for seconds in sides.values()), measure
    for measure, sides in result["timings_s"].items():
        assert all(len(values) == 1 for values in sides.values()), measure
    assert set(result["medians_s"]["decode_step_cross_kv"]) == {"cached", "recompute", "recompute_with_encoder"}
    assert result["sizes"]["image_tokens"] == 16 and result["sizes"]["long_context_image_tokens"] == 80
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["torch_threads"] == 1
    assert result["settings"]["dtype"] == "float32" and result["settings"]["repeats"] == 1
    assert result["flops"]["hive_prefill_counted_by_torch"] == sum(result["flops"]["hive_prefill"].values())
    # The third column: shared-softmax against the gated blocks, measured in the same rounds.
    assert set(result["shared_softmax"]) == set(SHARED_SOFTMAX_TARGETS)
    assert all(is_number(value) and value > 0 for value in result["shared_softmax"].values()), result["shared_softmax"]
    for measure in ("ttft", "llm_prefill", "fusion", "decode_step_576", "decode_step_2880", "train_step"):
        assert set(result["medians_s"][measure]) >= {"hive", "llava", "shared_softmax"}, measure

    # Compiled decode: every model compiled (at least one graph), timed in the same rounds, ratios as numbers.
    compiled = result["compiled"]
    assert compiled["settings"]["backend"] == "eager" and compiled["settings"]["mode"] == "default"
    assert set(compiled["ratios"]) == {f"{kind}decode_ratio_{key}" for kind in ("", "shared_softmax_") for key in ("576", "2880")}
    assert all(is_number(value) and value > 0 for value in compiled["ratios"].values())
    for key in ("576", "2880"):
        assert {name: len(values) for name, values in compiled["timings_s"][f"decode_step_{key}"].items()} == dict.fromkeys(MODELS, 1)
        assert all(compiled["dynamo"][key][name]["graphs"] >= 1 for name in MODELS), compiled["dynamo"][key]
        assert all(seconds > 0 for seconds in compiled["compile_s"][key].values())

    # Roofline: a measured bandwidth, bytes per step from the models' weights and caches, fractions of the limit.
    roofline = result["roofline"]
    assert roofline["copy_bytes_per_s"] > 0 and len(roofline["copy_timings_s"]) == 1
    for key in ("576", "2880"):
        assert roofline["decode_step_bytes"][key]["llava"] > roofline["decode_weight_bytes"]["llava"]
        for mode in ("eager", "compiled"):
            assert all(0 < fraction <= 1 for fraction in roofline["decode_fraction_of_bandwidth"][mode][key].values()), (mode, key)
    assert 0 < roofline["prefill_fraction_of_matmul_peak"] <= 1 and 0 < roofline["train_step_fraction_of_matmul_peak"] <= 1

    # The sweep: batch 1, 8 and the largest batch within toy's CPU cap (8); stage 2 at each model's largest batch in
    # the budget, whose measured peak is within it.
    sweep = result["sweep"]
    assert sweep["batch_limit"] == 8 and sweep["memory_budget_bytes"] == int(TOY.cpu_memory_budget_gib * 2**30)
    assert set(sweep["decode"]) == {"1", "8", "largest"}
    for key, row in sweep["decode"].items():
        assert set(row["batch_sizes"]) == {"hive", "llava"} and all(1 <= batch <= 8 for batch in row["batch_sizes"].values())
        assert all(is_number(tokens) and tokens > 0 for tokens in row["tokens_per_s"].values()), key
        assert all(0 < fraction <= 1 for fraction in row["fraction_of_bandwidth"].values()), key
    assert sweep["decode"]["8"]["step_bytes"]["llava"] > sweep["decode"]["1"]["step_bytes"]["llava"]
    train = sweep["train"]
    for name, batch in train["batch_sizes"].items():
        assert 1 <= batch <= 8
        assert 0 < train["largest_search"][name]["peak_bytes"][str(batch)] <= sweep["memory_budget_bytes"]
        assert is_number(train["samples_per_s"][name]) and train["samples_per_s"][name] > 0
    assert 0 < train["hive_fraction_of_matmul_peak"] <= 1

    printed = capsys.readouterr().out
    labels = ("time to first token", "KV-cache bytes", "matmul peak", "shared-softmax vs gated blocks", "compiled decode", "bandwidth limit",
              "decode batch sweep", "stage-2 at the largest batch", f"wrote {out}")  # fmt: skip
    assert all(label in printed for label in labels)


def test_bad_arguments_are_refused_with_the_field_named(tmp_path, capsys):
    assert main(["bench", "--size", "toy", "--repeats", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--repeats" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(SystemExit):
        main(["bench", "--size", "huge"])


def test_bench_imports_neither_datasets_nor_evaluate():
    code = (
        "import sys, hive_vlm.bench.cli, hive_vlm.bench.benchmark\n"
        "print(sorted(name for name in ('datasets', 'evaluate') if name in sys.modules))"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "[]"


@torch.inference_mode()
def test_measured_paths_compute_what_the_models_compute(one_thread):
    hive, llava = build_models(TOY)
    batch = bench_batch(TOY, 2)

    # Shared backbones: with its gates at 0 HIVE is the bare LLM, and so is LLaVA on a text-only prompt.
    assert torch.equal(hive(input_ids=batch.input_ids).logits, llava(input_ids=batch.input_ids).logits)

    # LLM-side prefill: HIVE's LLM on precomputed image keys/values equals the whole forward from pixels.
    whole = hive(input_ids=batch.input_ids, pixel_values=batch.pixel_values, use_cache=True)
    _, key_values = hive_image_key_values(hive, batch, images=1)
    cache = cache_with_image_key_values(hive, key_values)
    llm_side = hive(input_ids=batch.input_ids, cache=cache, use_cache=True)
    torch.testing.assert_close(llm_side.logits, whole.logits)
    assert cache_bytes(cache) == cache_bytes(whole[CACHE_NAME])

    # LLaVA's merged embeddings equal what LLaVA builds from input_ids and pixel_values itself.
    merged = llava(inputs_embeds=llava_inputs_embeds(llava, batch, images=1), use_cache=True)
    native = llava(input_ids=batch.llava_input_ids, pixel_values=batch.pixel_values, use_cache=True)
    torch.testing.assert_close(merged.logits, native.logits)

    # The long-context stand-in: HIVE attends to 5 tiles of the image's tokens, LLaVA's prompt holds 5 copies.
    _, long_key_values = hive_image_key_values(hive, batch, images=5)
    assert long_key_values[0][0].shape[-2] == 5 * TOY.image_tokens
    assert llava_inputs_embeds(llava, batch, images=5).shape[1] == TOY.text_tokens + 5 * TOY.image_tokens

    # The shared-softmax model: the same backbones and projectors, its image projections the LLM's own; its LLM-side
    # prefill on precomputed image keys/values equals its whole forward too, and it caches as many bytes as the gated
    # blocks (the same kv heads per connection).
    shared = build_shared_softmax(hive)
    assert torch.equal(shared(input_ids=batch.input_ids).logits, hive(input_ids=batch.input_ids).logits)
    shared_whole = shared(input_ids=batch.input_ids, pixel_values=batch.pixel_values, use_cache=True)
    shared_cache = cache_with_image_key_values(shared, hive_image_key_values(shared, batch, images=1)[1])
    torch.testing.assert_close(shared(input_ids=batch.input_ids, cache=shared_cache, use_cache=True).logits, shared_whole.logits)
    assert cache_bytes(shared_whole[CACHE_NAME]) == cache_bytes(whole[CACHE_NAME])
    layer = shared.model.language_model.layers[shared.config.cross_attention_layers[0][1]]
    assert torch.equal(shared.model.cross_attention_layers[0].k_proj.weight, layer.self_attn.k_proj.weight)

    # Cache bytes: HIVE's image layers are counted, and LLaVA's cache grows with the image tokens.
    hive_bytes, llava_bytes = cache_bytes(whole[CACHE_NAME]), cache_bytes(native[CACHE_NAME])
    assert hive_bytes["cross_attention"] > 0 and llava_bytes["cross_attention"] == 0
    layers, kv_width = TOY.text["num_hidden_layers"], TOY.text["num_key_value_heads"] * TOY.text["hidden_size"] // TOY.text["num_attention_heads"]
    assert llava_bytes["total"] == 2 * 2 * layers * (TOY.text_tokens + TOY.image_tokens) * kv_width * 4


def test_analytic_flops_equal_torch_flop_counter(one_thread):
    # 8 LLM layers: the blocks sit at layers 1, 3, 5, 7, so layer 0 is off the gradient path in the training step.
    size = replace(TOY, text={**TOY.text, "num_hidden_layers": 8})
    hive, _ = build_models(size)
    assert min(pair[1] for pair in hive.config.cross_attention_layers) > 0
    batch = bench_batch(size, 2)
    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        hive(input_ids=batch.input_ids[:1], pixel_values=batch.pixel_values[:1], use_cache=True, logits_to_keep=1)
    assert counter.get_total_flops() == sum(hive_prefill_flops(hive.config, size.text_tokens).values())

    hive.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)
    hive.train()
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        hive(input_ids=batch.input_ids, pixel_values=batch.pixel_values, labels=batch.input_ids).loss.backward()
    assert counter.get_total_flops() == sum(hive_stage2_step_flops(hive.config, size.text_tokens, batch_size=2).values())


@torch.inference_mode()
def test_bytes_per_decode_step_equal_a_hand_count_on_toy(one_thread):
    hive, llava = build_models(TOY)
    shared = build_shared_softmax(hive)
    batch = bench_batch(TOY, 1)
    prefills = {name: prefill_for_decode(model, batch, 1, is_llava=name == "llava") for name, model in zip(MODELS, (hive, llava, shared))}
    weights = {name: decode_weight_bytes(model, lambda m=model, p=prefills[name]: decode_one_step(m, p))
               for name, model in zip(MODELS, (hive, llava, shared))}  # fmt: skip

    # Qwen2 at toy: width 32, 2 heads of 16, 1 K/V head, MLP 64, vocabulary 256 (the head tied to the embedding), 4 layers.
    layer = (32 * 32 + 32) + 2 * (32 * 16 + 16) + 32 * 32 + 3 * 32 * 64 + 2 * 32  # q, k, v (biased), o, MLP, 2 norms
    llm = 256 * 32 + 4 * layer + 32  # the head reads the whole tied matrix; the final norm
    assert weights["llava"] == 4 * llm
    # A gated block at decode reads everything but its image k/v projections (the image keys/values are cached).
    assert hive.config.cross_attention_intermediate_size == 128 and hive.config.cross_attention_qk_norm
    block = 32 + 2 + 32 * 32 + 16 + 32 * 32 + 32 + (32 * 128 + 128) + (128 * 32 + 32)  # norm, gates, q, q norm, o, norm, MLP
    assert weights["hive"] == 4 * (llm + 4 * block)
    # Shared-softmax's image keys join the LLM's own attention: a decode step reads the LLM's weights alone.
    assert weights["shared_softmax"] == 4 * llm

    # The caches: per position, 4 layers x (K and V) x 16 floats; HIVE's 4 blocks x (K and V) x 16 image tokens x 16.
    caches = {name: cache_bytes(prefill[0]) for name, prefill in prefills.items()}
    per_position = 4 * 2 * 16 * 4
    assert cache_bytes_per_position(caches["llava"], TOY.text_tokens + TOY.image_tokens) == per_position
    assert cache_bytes_per_position(caches["hive"], TOY.text_tokens) == per_position
    assert caches["hive"]["cross_attention"] == 4 * 2 * 16 * 16 * 4
    # 4 steps after 8 positions attend to 10.5 positions on average; the weights are read once for the batch.
    assert decode_step_bytes(weights["hive"], per_position, caches["hive"]["cross_attention"], TOY.text_tokens, steps=4, batch_size=2) == (
        4 * (llm + 4 * block) + 2 * (per_position * 10.5 + 4 * 2 * 16 * 16 * 4)
    )


def test_largest_batch_predicts_from_two_batches_and_backs_off_until_it_fits():
    # Linear memory: the prediction from batches 1 and 2 fits at once.
    batch, tried = largest_batch(lambda b: 100 + 10 * b, budget=1_000, limit=1_000)
    assert batch == 90 and set(tried) == {1, 2, 90}
    # Memory that grows faster than the two first batches say: smaller batches are tried until one fits.
    batch, tried = largest_batch(lambda b: 100 + 10 * b + b * b, budget=1_000, limit=1_000)
    assert 100 + 10 * batch + batch * batch <= 1_000 and all(100 + 10 * b + b * b > 1_000 for b in tried if b > batch)
    # Running out of device memory counts as not fitting; the limit caps the search; nothing fits gives 0.
    def out_of_memory_above_20(b):
        if b > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return b

    assert largest_batch(out_of_memory_above_20, budget=10**9, limit=1_000)[0] <= 20
    assert largest_batch(lambda b: b, budget=10**9, limit=6)[0] == 6
    assert largest_batch(lambda b: 2_000, budget=1_000, limit=8)[0] == 0
