"""HIVE under `torch.compile`: whole-graph, sync-free, never recompiled, and exactly the eager tokens.

What a GPU user runs is `generate(cache_implementation="static")`, which compiles the decode step (on CUDA with
CUDA graphs); on the CPU it does so when asked through `CompileConfig._compile_all_devices`. These tests are the CPU
proxy of the GPU's checks: a graph that dynamo captures whole (`fullgraph=True`) holds no `.item()`, `.tolist()`,
`bool(tensor)`, `nonzero` or data-dependent shape, so it never waits for the device; dynamo's counters show every
graph break and every recompile. They run on the oldest and the newest supported transformers (`dev.py`).

Most tests compile with the `aot_eager` backend: dynamo and AOTAutograd as inductor sees them, without inductor's
C++ build (minutes on a 2-core CPU); one test per fusion runs generate's own default backend, inductor.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from transformers import CompileConfig, DynamicCache, StaticCache

import tiny_hive
from modeling_hive.cache_hive import HiveCrossAttentionCacheLayer
from modeling_hive.compatibility_hive import CACHE_NAME


GREEDY = dict(do_sample=False, pad_token_id=0)
# (encoder, LLM, fusion): Llama and Qwen2 in both fusions, and a multi-scale encoder (Swin: one level per stage).
CASES = [
    ("vit", "llama", "gated"),
    ("siglip", "qwen2", "gated"),
    ("swin", "llama", "gated"),
    ("vit", "llama", "shared_softmax"),
    ("siglip", "qwen2", "shared_softmax"),
]


def build(vision="vit", text="llama", mode="gated", seed=1):
    """A tiny HIVE with every gate open (so that the image changes the tokens and an ignored image shows)."""
    pairs = {"cross_attention_layers": [[1, 1], [3, 3]]} if vision == "swin" else {}
    return tiny_hive.build((vision, text), seed=seed, gate=1.0 if mode == "gated" else None, cross_attention_mode=mode, **pairs)


def images(seed, batch=2):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def prompt(batch=2, length=7, seed=1):
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def compile_config(backend="aot_eager", **kwargs):
    config = CompileConfig(fullgraph=True, backend=backend, mode=None if backend != "inductor" else "default", **kwargs)
    config._compile_all_devices = True  # generate compiles on CUDA by itself; on the CPU only when told to
    return config


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(case))
def test_generates_decode_step_compiles_whole_once_for_every_step_and_image(case):
    model = build(*case)
    kwargs = dict(input_ids=prompt(), max_new_tokens=17, cache_implementation="static", return_dict_in_generate=True,
                  output_logits=True, **GREEDY)  # 16 decode steps; fmt: skip
    compiled = [model.generate(**kwargs, pixel_values=images(seed), compile_config=compile_config()) for seed in (1, 2)]
    # The second image of the same size runs the same graph: no recompile.
    assert graph_breaks() == 0 and graphs() == 1
    for seed, run in zip((1, 2), compiled):
        eager = model.generate(**kwargs, pixel_values=images(seed), disable_compile=True)
        assert torch.equal(run.sequences, eager.sequences)
        torch.testing.assert_close(torch.stack(run.logits), torch.stack(eager.logits))
    # Every decode step read its own image (the second prefill's keys/values, written where the graph reads them).
    assert all(not torch.allclose(a, b) for a, b in zip(compiled[0].logits[1:], compiled[1].logits[1:]))


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(case))
def test_the_forward_with_an_image_compiles_whole_and_once_for_two_images(case):
    model = build(*case)
    forward = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    input_ids = prompt()
    results = []
    with torch.no_grad():
        for seed in (1, 2):
            cache = StaticCache(config=model.config.text_config, max_cache_len=32)
            compiled = forward(input_ids=input_ids, pixel_values=images(seed), use_cache=True, **{CACHE_NAME: cache})
            cache = StaticCache(config=model.config.text_config, max_cache_len=32)
            eager = model(input_ids=input_ids, pixel_values=images(seed), use_cache=True, **{CACHE_NAME: cache})
            torch.testing.assert_close(compiled.logits, eager.logits)
            image_layers = getattr(compiled, CACHE_NAME).layers[model.config.text_config.num_hidden_layers :]
            assert len(image_layers) == 2 and all(isinstance(layer, HiveCrossAttentionCacheLayer) for layer in image_layers)
            results.append(compiled.logits)
    assert graph_breaks() == 0 and graphs() == 1
    assert not torch.allclose(results[0], results[1])


@pytest.mark.parametrize("mode", ["gated", "shared_softmax"])
def test_generate_with_its_default_compiler_gives_the_eager_tokens(mode):
    # Inductor, generate's own default (on CUDA with CUDA graphs, mode "reduce-overhead").
    model = build(mode=mode)
    kwargs = dict(input_ids=prompt(), pixel_values=images(1), max_new_tokens=8, cache_implementation="static", **GREEDY)
    compiled = model.generate(**kwargs, compile_config=compile_config("inductor"))
    assert graph_breaks() == 0 and graphs() == 1
    assert torch.equal(compiled, model.generate(**kwargs, disable_compile=True))


@pytest.mark.parametrize("mode", ["gated", "shared_softmax"])
def test_compiled_beam_search_and_left_padded_batch_give_the_eager_tokens(mode):
    model = build(mode=mode)
    input_ids = prompt(length=6)
    batch_ids = torch.cat([input_ids[:1], torch.cat([torch.zeros(1, 2, dtype=torch.long), input_ids[1:, 2:]], dim=1)])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    runs = {
        "beam": dict(input_ids=input_ids, num_beams=3, num_return_sequences=2),
        "left-padded": dict(input_ids=batch_ids, attention_mask=mask),
    }
    for name, run in runs.items():
        kwargs = dict(**run, pixel_values=images(1), max_new_tokens=6, cache_implementation="static", **GREEDY)
        compiled = model.generate(**kwargs, compile_config=compile_config())
        eager = model.generate(**kwargs, disable_compile=True)
        assert torch.equal(compiled, eager), name
        assert torch.equal(eager, model.generate(**{k: v for k, v in kwargs.items() if k != "cache_implementation"}, use_cache=False)), name
    assert graph_breaks() == 0


@pytest.mark.parametrize("mode", ["gated", "shared_softmax"])
def test_generate_with_the_forward_compiled_by_hand_gives_the_eager_tokens(mode):
    model = build(mode=mode)
    kwargs = dict(input_ids=prompt(), pixel_values=images(1), max_new_tokens=8, cache_implementation="static", **GREEDY)
    eager = model.generate(**kwargs, disable_compile=True)
    model.forward = torch.compile(model.forward, fullgraph=True, backend="aot_eager")  # prefill and decode, by hand
    assert torch.equal(model.generate(**kwargs, disable_compile=True), eager)
    assert graph_breaks() == 0 and graphs() == 2  # the prefill with its image, and the decode step


def test_image_key_values_stay_at_fixed_addresses_through_decoding_and_beam_reordering():
    # CUDA graphs replay on the addresses they recorded: every decode step must find the image keys/values where the
    # prefill put them, beam reordering included; a second image of the same shape is written into the same buffers.
    model = build()
    num_text_layers = model.config.text_config.num_hidden_layers
    seen, forward = [], model.forward

    def recording_forward(*args, **kwargs):
        outputs = forward(*args, **kwargs)
        layers = getattr(outputs, CACHE_NAME).layers[num_text_layers:]
        seen.append([(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in layers])
        return outputs

    model.forward = recording_forward
    kwargs = dict(input_ids=prompt(), max_new_tokens=5, num_beams=3, cache_implementation="static", return_dict_in_generate=True,
                  **GREEDY)  # fmt: skip
    out = model.generate(**kwargs, pixel_values=images(1), disable_compile=True)
    assert len(seen) == 5 and all(step == seen[0] for step in seen)
    cache = getattr(out, CACHE_NAME)
    layers = cache.layers[num_text_layers:]
    before = [layer.keys.clone() for layer in layers]
    cache.reset()  # as a reused static cache is
    with torch.no_grad():
        forward(input_ids=prompt(batch=6), pixel_values=images(2, batch=6), use_cache=True, **{CACHE_NAME: cache})
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in layers] == seen[0]
    assert not any(torch.equal(layer.keys, keys) for layer, keys in zip(layers, before))  # rewritten in place


def test_value_checks_run_eagerly_and_are_left_out_of_the_compiled_graph():
    model = build()
    input_ids = prompt()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(input_ids=input_ids + 1000, pixel_values=images(1), max_new_tokens=2, cache_implementation="static",
                       compile_config=compile_config(), **GREEDY)  # fmt: skip
    bad = images(1)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.generate(input_ids=input_ids, pixel_values=bad, max_new_tokens=2, cache_implementation="static",
                       compile_config=compile_config(), **GREEDY)  # fmt: skip
    forward = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        forward(input_ids=input_ids, pixel_values=images(1), image_mask=torch.tensor([True, False]), labels=input_ids)
    assert graph_breaks() == 0


@pytest.mark.parametrize("mode", ["gated", "shared_softmax"])
def test_a_prefill_into_a_static_cache_equals_one_into_a_dynamic_cache(mode):
    # A static cache's prefill reaches the attention with no mask (transformers leaves it to sdpa's upper-left causal
    # alignment over the empty slots): shared_softmax once read that as lower-right and let the prompt see empty slots.
    model = build(mode=mode)
    input_ids, pixel_values = prompt(length=5), images(1)
    with torch.no_grad():
        logits = [
            model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, **{CACHE_NAME: cache}).logits
            for cache in (StaticCache(config=model.config.text_config, max_cache_len=16), DynamicCache(config=model.config.text_config))
        ]
    torch.testing.assert_close(logits[0], logits[1])


@pytest.mark.parametrize("mode", ["gated", "shared_softmax"])
def test_generate_checks_values_before_a_compiled_prefill(mode):
    # A prompt within one prefill chunk runs its prefill through generate's compiled call: the value checks of the
    # forward are skipped there, so generate runs them first (NaN pixels would otherwise decode as pad tokens).
    model = build(mode=mode)
    bad = images(1)
    bad[0, 0, 0, 0] = float("nan")
    kwargs = dict(input_ids=prompt(), max_new_tokens=3, cache_implementation="static", prefill_chunk_size=16,
                  compile_config=compile_config(), **GREEDY)  # fmt: skip
    with pytest.raises(ValueError, match="NaN"):
        model.generate(**kwargs, pixel_values=bad)
    with pytest.raises(ValueError, match="True/False"):
        model.generate(**kwargs, pixel_values=images(1), image_mask=torch.tensor([2, 0]))
    compiled = model.generate(**kwargs, pixel_values=images(1))
    assert torch.equal(compiled, model.generate(**{**kwargs, "prefill_chunk_size": None}, pixel_values=images(1), disable_compile=True))
