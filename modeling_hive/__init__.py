"""`modeling_hive`: HIVE as a transformers model: config, model, processor and the visual-question-answering pipeline.

This folder is what a Hub checkpoint ships for `trust_remote_code=True`; importing it also registers HIVE with
the Auto classes of the running process.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .configuration_hive import HiveConfig
from .modeling_hive import HiveForConditionalGeneration, HiveModel, HivePreTrainedModel
from .pipeline_hive import HIVE_CUSTOM_PIPELINES, HiveVisualQuestionAnsweringPipeline
from .processing_hive import HIVE_CHAT_TEMPLATE, HiveProcessor


AutoConfig.register("hive", HiveConfig, exist_ok=True)
AutoModel.register(HiveConfig, HiveForConditionalGeneration, exist_ok=True)  # as a saved folder's auto_map: the class that generates
AutoModelForImageTextToText.register(HiveConfig, HiveForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(HiveConfig, HiveForConditionalGeneration, exist_ok=True)
AutoProcessor.register(HiveConfig, HiveProcessor, exist_ok=True)
# save_pretrained copies the code files of classes registered for an Auto class (the full auto_map is set on save).
HiveConfig.register_for_auto_class()
HiveModel.register_for_auto_class("AutoModel")
HiveForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
HiveProcessor.register_for_auto_class()

__all__ = [
    "HIVE_CHAT_TEMPLATE",
    "HIVE_CUSTOM_PIPELINES",
    "HiveConfig",
    "HiveForConditionalGeneration",
    "HiveModel",
    "HivePreTrainedModel",
    "HiveProcessor",
    "HiveVisualQuestionAnsweringPipeline",
]
