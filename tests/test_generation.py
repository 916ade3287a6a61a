"""Generation with the image: every decoding mode gives exactly the tokens of decoding without the cache.

Runs on the newest and the oldest supported transformers (`python3 dev.py test`): the cache's name changed between
them (`past_key_values` before 5.25, `cache` since), and a model that reads the wrong name decodes every token after
the first without the image, silently. Every check uses open gates (only HIVE's `*_gate` parameters non-zero) and
asserts exact token equality, for a Llama-, a Qwen2- and a GPT-2-style LLM.
"""

import copy

import pytest
import torch
from transformers import DynamicCache

from modeling_hive.compatibility_hive import CACHE_NAME
from modeling_hive.modeling_hive import HiveCrossAttentionCacheLayer
from tiny_hive import PAIRS, build, inputs


GREEDY = dict(do_sample=False, pad_token_id=0)


@pytest.fixture(scope="module", params=PAIRS, ids=lambda pair: pair[1])
def model(request):
    return build(request.param, seed=1, gate=1.0)  # a seed where even tiny GPT-2 lets the image change its tokens


def test_the_image_changes_what_is_generated(model):
    input_ids, pixel_values = inputs()
    with_image = model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=8, **GREEDY)
    without = model.generate(input_ids=input_ids, max_new_tokens=8, **GREEDY)
    assert not torch.equal(with_image, without)  # else the equalities below would prove nothing


def test_greedy_with_cache_equals_greedy_without(model):
    input_ids, pixel_values = inputs()
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=8, **GREEDY)
    assert torch.equal(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))


def test_static_cache_equals_greedy(model):
    input_ids, pixel_values = inputs()
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, **GREEDY)
    assert torch.equal(model.generate(**kwargs, cache_implementation="static"), model.generate(**kwargs, use_cache=False))


def test_beam_search_with_cache_equals_beam_search_without(model):
    input_ids, pixel_values = inputs()
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, num_beams=3, num_return_sequences=2, **GREEDY)
    beams = model.generate(**kwargs)
    assert beams.shape == (4, 13)
    assert torch.equal(beams, model.generate(**kwargs, use_cache=False))


def test_sampling_several_sequences_with_cache_equals_sampling_without(model):
    input_ids, pixel_values = inputs()
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=True, num_return_sequences=3, pad_token_id=0)
    torch.manual_seed(5)
    sampled = model.generate(**kwargs)
    torch.manual_seed(5)
    assert sampled.shape == (6, 13)
    assert torch.equal(sampled, model.generate(**kwargs, use_cache=False))


def test_left_padded_batch_generates_what_each_sample_generates_alone(model):
    input_ids, pixel_values = inputs(length=6)
    short = input_ids[1, 2:]
    batch_ids = torch.stack([input_ids[0], torch.cat([torch.zeros(2, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    batched = model.generate(input_ids=batch_ids, attention_mask=mask, pixel_values=pixel_values, max_new_tokens=6, **GREEDY)
    first = model.generate(input_ids=input_ids[:1], pixel_values=pixel_values[:1], max_new_tokens=6, use_cache=False, **GREEDY)
    second = model.generate(input_ids=short[None], pixel_values=pixel_values[1:], max_new_tokens=6, use_cache=False, **GREEDY)
    assert torch.equal(batched[0], first[0]) and torch.equal(batched[1, 2:], second[0])


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_generation_continues_from_a_returned_cache_without_the_image(model, name):
    input_ids, pixel_values = inputs()
    whole = model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=8, **GREEDY)
    first = model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=4, return_dict_in_generate=True, **GREEDY)
    returned = first[CACHE_NAME]
    assert isinstance(returned.layers[-1], HiveCrossAttentionCacheLayer)
    more = dict(max_new_tokens=4, return_dict_in_generate=True, output_logits=True, **GREEDY)
    mask = torch.ones_like(first.sequences)  # a generated pad id (0) is a real token here
    rest = model.generate(input_ids=first.sequences, attention_mask=mask, **{name: returned}, **more)
    assert torch.equal(rest.sequences, whole)
    text_only = model.generate(input_ids=first.sequences, attention_mask=mask, **more)
    assert not torch.allclose(rest.logits[0], text_only.logits[0])  # the continuation read the image from the cache


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_generate_fills_a_cache_the_user_passes_under_either_name(model, name):
    input_ids, pixel_values = inputs()
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, **GREEDY)
    mine = DynamicCache(config=model.config.text_config)
    assert torch.equal(model.generate(**kwargs, **{name: mine}), model.generate(**kwargs, use_cache=False))
    assert isinstance(mine.layers[-1], HiveCrossAttentionCacheLayer)


def test_assisted_decoding_by_prompt_lookup_equals_greedy(model):
    # Assisted decoding reads `outputs.<cache>` after each step and crops the cache: the image keys/values must stay.
    input_ids, pixel_values = inputs(batch=1, length=12)
    input_ids = torch.cat([input_ids, input_ids], dim=1)  # repeats for the lookup to propose
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=8, **GREEDY)
    assert torch.equal(model.generate(**kwargs, prompt_lookup_num_tokens=3), model.generate(**kwargs, use_cache=False))


def test_forward_takes_the_cache_under_either_name_and_refuses_two(model):
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        cache = model(input_ids=input_ids[:, :-1], pixel_values=pixel_values, use_cache=True)[CACHE_NAME]
        step = model(input_ids=input_ids[:, -1:], cache=copy.deepcopy(cache), use_cache=True).logits
        old_name = model(input_ids=input_ids[:, -1:], past_key_values=copy.deepcopy(cache), use_cache=True).logits
        whole = model(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(step, old_name, rtol=0, atol=0)
    torch.testing.assert_close(step[:, -1], whole[:, -1])
    with pytest.raises(ValueError, match="(?i)both"):
        model(input_ids=input_ids[:, -1:], cache=cache, past_key_values=DynamicCache(config=model.config.text_config))


def test_cross_attention_key_values_are_computed_once_at_prefill():
    model = build(gate=1.0)
    input_ids, pixel_values = inputs()
    calls = []
    original = model.model.get_cross_attention_key_values
    model.model.get_cross_attention_key_values = lambda states: calls.append(1) or original(states)
    out = model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    assert len(calls) == 1
    cache = out[CACHE_NAME]
    vision_layers = cache.layers[model.config.text_config.num_hidden_layers :]
    assert len(vision_layers) == 2 and all(isinstance(layer, HiveCrossAttentionCacheLayer) for layer in vision_layers)
    assert vision_layers[0].keys.shape == (2, 1, 17, 16)  # (B, kv_heads, image tokens, head_dim)


def test_mixed_batch_generation_keeps_the_image_mask_in_the_cache():
    model = build(gate=1.0)
    input_ids, pixel_values = inputs()
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    mixed = model.generate(input_ids=input_ids, pixel_values=pixel_values, image_mask=torch.tensor([True, False]), **kwargs)
    text_only = model.generate(input_ids=input_ids[1:], **kwargs)
    with_image = model.generate(input_ids=input_ids[:1], pixel_values=pixel_values[:1], **kwargs)
    assert torch.equal(mixed[1], text_only[0]) and torch.equal(mixed[0], with_image[0])
