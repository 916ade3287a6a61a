"""The `visual-question-answering` pipeline shipped with HIVE checkpoints (a custom pipeline in transformers 5)."""

from transformers import GenerationConfig, Pipeline

from .images_hive import load_rgb_image
from .processing_hive import vqa_prompt


# Written into `config.json` as `custom_pipelines`: `pipeline("visual-question-answering", model=<folder>,
# trust_remote_code=True)` then loads `HiveVisualQuestionAnsweringPipeline` from the copied `pipeline_hive.py`.
HIVE_CUSTOM_PIPELINES = {
    "visual-question-answering": {
        "impl": "pipeline_hive.HiveVisualQuestionAnsweringPipeline",
        "pt": ["AutoModelForImageTextToText"],
        "type": "multimodal",
    }
}

_GENERATION_KEYS = frozenset(key for key in vars(GenerationConfig()) if not key.startswith("_"))


def _is_container(value) -> bool:
    return isinstance(value, (list, tuple))


class HiveVisualQuestionAnsweringPipeline(Pipeline):
    r"""
    Answers a question about an image with a HIVE model: the question goes through the processor's chat template
    as a user turn holding the image (exactly as the `image-text-to-text` pipeline sends chat messages), the model
    generates (greedily unless the generation config says otherwise), and the generated text is the answer.

    Loaded from a saved HIVE folder with `pipeline("visual-question-answering", model=folder,
    trust_remote_code=True)`; built in memory with `HiveVisualQuestionAnsweringPipeline(model=model,
    processor=processor)` (transformers 5 only resolves this removed task name through a checkpoint's
    `custom_pipelines`).

    Inputs: `pipe(image=..., question=...)`, `pipe({"image": ..., "question": ...})`, or lists of either. A list of
    images with one question asks it about every image; one image with a list of questions asks them all. An image
    is a PIL image, a numpy array, a torch tensor or a file path.

    Returns `[{"answer": str}]` for a single input, and one such list per input for a list of inputs.

    Args (at construction or call):
        max_new_tokens (`int`, *optional*):
            Longest answer, in tokens. Defaults to the model's generation config, else 16.
        generate_kwargs (`dict`, *optional*):
            Extra `generate()` arguments; generation parameters such as `num_beams` may also be passed directly.
        batch_size (`int`, *optional*, defaults to 1):
            Inputs per `generate()` call for a list of inputs (left-padded).

    Example:
        ```python
        >>> from transformers import pipeline
        >>> vqa = pipeline("visual-question-answering", model="path/to/hive", trust_remote_code=True)
        >>> vqa(image="shapes.png", question="what colour is the circle?")
        [{'answer': 'red'}]
        >>> vqa([{"image": "a.png", "question": "how many shapes?"}, {"image": "b.png", "question": "which shape?"}],
        ...     batch_size=2, max_new_tokens=4)
        [[{'answer': '3'}], [{'answer': 'square'}]]
        ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=16)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None or getattr(self.processor, "tokenizer", None) is None:
            raise ValueError(
                "HiveVisualQuestionAnsweringPipeline needs a processor with a tokenizer and an image processor "
                "(a HiveProcessor): pass processor=..."
            )

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, **kwargs):
        unknown = sorted(set(kwargs) - _GENERATION_KEYS)
        if unknown:
            raise TypeError(f"Unexpected arguments for the visual-question-answering pipeline: {unknown}.")
        forward_params = {}
        merged_generate_kwargs = {**(generate_kwargs or {}), **kwargs}
        if max_new_tokens is not None:
            if "max_new_tokens" in merged_generate_kwargs:
                raise ValueError("`max_new_tokens` is given twice, directly and in `generate_kwargs`; give it once.")
            merged_generate_kwargs["max_new_tokens"] = max_new_tokens
        if merged_generate_kwargs:
            forward_params["generate_kwargs"] = merged_generate_kwargs
        return {}, forward_params, {}

    def __call__(self, image=None, question=None, **kwargs):
        """
        Answer questions about images.

        Args:
            image (image, `dict`, or `list` of either):
                The image(s), or `{"image": ..., "question": ...}` dict(s) (then leave `question` unset).
            question (`str` or `list[str]`):
                The question(s).
            kwargs:
                `max_new_tokens`, `generate_kwargs`, `batch_size` and generation parameters.

        Returns:
            `[{"answer": str}]` for one input, a list of those for a list of inputs.
        """
        inputs, is_batch = self._normalize_inputs(image, question)
        if is_batch:
            return super().__call__(inputs, **kwargs)
        return super().__call__(inputs[0], **kwargs)

    @staticmethod
    def _normalize_inputs(image, question) -> tuple[list[dict], bool]:
        if isinstance(image, dict) or (_is_container(image) and image and all(isinstance(x, dict) for x in image)):
            if question is not None:
                raise ValueError("Pass either dicts with 'image' and 'question' keys or `question=`, not both.")
            items = [image] if isinstance(image, dict) else list(image)
            inputs = [HiveVisualQuestionAnsweringPipeline._validate_item(item, i) for i, item in enumerate(items)]
            return inputs, not isinstance(image, dict)
        if _is_container(image) and len(image) == 0:
            raise ValueError("Got an empty list of images.")
        if _is_container(question) and len(question) == 0:
            raise ValueError("Got an empty list of questions.")
        images = list(image) if _is_container(image) else [image]
        questions = list(question) if _is_container(question) else [question]
        if len(images) > 1 and len(questions) > 1 and len(images) != len(questions):
            raise ValueError(f"Got {len(images)} images and {len(questions)} questions; pass as many of each.")
        count = max(len(images), len(questions))
        images = images * count if len(images) == 1 else images
        questions = questions * count if len(questions) == 1 else questions
        inputs = [
            HiveVisualQuestionAnsweringPipeline._validate_item({"image": img, "question": q}, i)
            for i, (img, q) in enumerate(zip(images, questions))
        ]
        return inputs, _is_container(image) or _is_container(question)

    @staticmethod
    def _validate_item(item: dict, index: int) -> dict:
        unknown = sorted(set(item) - {"image", "question"})
        if unknown:
            raise ValueError(f"Input {index} has unexpected keys {unknown}; expected 'image' and 'question'.")
        if item.get("image") is None:
            raise ValueError(f"Input {index} has no image: visual question answering needs an image per question.")
        question = item.get("question")
        if question is None:
            raise ValueError(f"Input {index} has no question: pass question=... or a 'question' key.")
        if not isinstance(question, str):
            raise TypeError(f"Input {index}: the question must be a string, got {type(question).__name__}.")
        if not question.strip():
            raise ValueError(f"Input {index}: the question is empty.")
        return {"image": item["image"], "question": question}

    def preprocess(self, inputs):
        image = load_rgb_image(inputs["image"], where="image")
        text, text_kwargs = vqa_prompt(self.processor, inputs["question"])
        model_inputs = self.processor(images=image, text=text, return_tensors="pt", **text_kwargs)
        return dict(model_inputs.to(dtype=self.dtype))

    def _forward(self, model_inputs, generate_kwargs=None):
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        prompt_length = model_inputs["input_ids"].shape[1]
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"answer_ids": sequences[:, prompt_length:]}  # (B, new tokens)

    def postprocess(self, model_outputs):
        answers = self.processor.post_process_image_text_to_text(model_outputs["answer_ids"], skip_special_tokens=True)
        return [{"answer": answers[0].strip()}]


__all__ = ["HiveVisualQuestionAnsweringPipeline", "HIVE_CUSTOM_PIPELINES"]
