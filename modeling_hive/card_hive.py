"""The HIVE model card (`README.md`): the one builder of its front matter and of the sections every HIVE card has.

`HiveProcessor.save_pretrained` fills it with what a processor knows; `hive card` (`hive_vlm.hub.card`) adds the
model's table, its training and its evaluation (rendered from `model_cards/hive_template.md`) and a model-index.
"""

from huggingface_hub import ModelCard, ModelCardData


CARD_NAME = "README.md"
HIVE_CARD_TAGS = ["hive", "vision-language", "custom_code", "image-text-to-text", "visual-question-answering", "cross-attention"]

_INTRODUCTION = """\
HIVE connects a vision encoder to a causal language model through gated cross-attention blocks placed at several
`[vision layer, LLM layer]` pairs, so that the language model reads the image at several levels of abstraction
(edges and textures, object parts, semantics) instead of through one flattened set of image tokens. The encoder is
pretrained with masked image modelling, aligned to a frozen LLM through the cross-attention blocks, then fine-tuned
jointly with the blocks (the LLM optionally through LoRA)."""

_HOW_TO_USE = """\
## How to use

The modelling code ships with the weights, so every call needs `trust_remote_code=True`.

```python
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

model_id = "{model_id}"

# Visual question answering, in one call.
vqa = pipeline("visual-question-answering", model=model_id, trust_remote_code=True)
print(vqa(image="image.png", question="What colour is the circle?"))

# The model and its processor, for generation with a chat prompt.
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "image", "path": "image.png"}}, {{"type": "text", "text": "What is in the picture?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
answer = model.generate(**inputs, max_new_tokens=32)[0, inputs["input_ids"].shape[1]:]
print(processor.decode(answer, skip_special_tokens=True))

# AutoModel gives the same generating class (tools that load unknown VLMs with AutoModel can call generate);
# the bare HIVE model (encoder, projectors, cross-attention and LLM, without the LM head) is its `.model`.
base = AutoModel.from_pretrained(model_id, trust_remote_code=True).model
```"""

_FIRST_LIMITATION = "The model inherits the biases, failure modes and licence terms of both backbones and of its training data."
_LAST_LIMITATIONS = [
    "Whether hierarchical cross-attention beats fusion at the LLM input depends on the setup: compare on your own\n"
    "  benchmarks before relying on it.",
    "Scores above are only as good as their protocol: results computed on a subset (`limit`) or with another prompt are\n"
    "  not comparable to published numbers.",
]

_CITATION = """\
## Citation

```bibtex
@misc{hive2026hierarchical,
  title         = {Hierarchical Pre-Training of Vision Encoders with Large Language Models},
  author        = {{HIVE authors}},
  year          = {2026},
  eprint        = {2604.00086},
  archivePrefix = {arXiv},
  note          = {CVPR 2026 Workshop},
  url           = {https://arxiv.org/abs/2604.00086}
}
```"""


def hive_model_card(title: str, *, details: str = "", limitations=(), **card_data) -> ModelCard:
    """
    A HIVE model card: front matter with `library_name`, `pipeline_tag` and HIVE's tags beside `card_data`, then the
    title, what HIVE is, `details`, how to use the model, its limitations and the citation.

    Args:
        title (`str`): the model's name, as the heading; an `org/name` title is also the id the usage example loads
            (otherwise `path/to/<title>`).
        details (`str`, *optional*): Markdown sections between the introduction and "How to use", each ending in a
            blank line (the model's table, its training, its evaluation).
        limitations (`list[str]`, *optional*): limitations of this model, listed after the one every HIVE model has.
        **card_data: further front matter, as `ModelCardData` takes it (`model_name`, `base_model`, `license`,
            `datasets`, `eval_results`).

    Example:
        ```python
        >>> card = hive_model_card("org/hive-tiny", license="apache-2.0")
        >>> card.data.pipeline_tag, card.data.license
        ('image-text-to-text', 'apache-2.0')
        ```
    """
    data = ModelCardData(library_name="transformers", pipeline_tag="image-text-to-text", tags=list(HIVE_CARD_TAGS), **card_data)
    model_id = title if "/" in title else f"path/to/{title}"
    limitation_lines = "\n".join(f"- {line}" for line in [_FIRST_LIMITATION, *limitations, *_LAST_LIMITATIONS])
    body = (
        f"# {title}\n\n{_INTRODUCTION}\n\n{details}{_HOW_TO_USE.format(model_id=model_id)}\n\n"
        f"## Limitations\n\n{limitation_lines}\n\n{_CITATION}"
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
