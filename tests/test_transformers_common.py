"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against HiveModel and
HiveForConditionalGeneration, set up the way transformers tests llava and mllama.

The tests come from the transformers source distribution of the installed version (see transformers_common.py):
`python tests/transformers_common.py fetch` once per transformers version. Without that copy this module is skipped,
or fails when HIVE_REQUIRE_COMMON_TESTS=1.
"""

import unittest
from unittest import mock

import torch
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device

from hive_vlm.tiny import tiny_hive_config
from modeling_hive import HiveConfig, HiveForConditionalGeneration, HiveModel
from transformers_common import require_common_tests


modeling_common, configuration_common = require_common_tests()
ModelTesterMixin = modeling_common.ModelTesterMixin
# An empty stand-in (the sdist lacks tests/generation/): no `generate` test runs from here. It is inherited all the same,
# as llava and mllama inherit the real one, because test_generation_tester_mixin_inheritance asks every model that
# can generate for it.
GenerationTesterMixin = modeling_common.GenerationTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor


class HiveModelTester:
    """A tiny HIVE model: a 2-layer ViT feeding a 2-layer Llama through one open cross-attention block per LLM layer."""

    def __init__(self, parent, batch_size=3, seq_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.num_hidden_layers = 2  # ModelTesterMixin.test_num_layers_is_small: at most 2 layers per backbone
        self.vocab_size = 99
        self.pad_token_id = 0
        self.image_size = 16
        self.patch_size = 8
        self.num_channels = 3
        # gate_init opens every gate (`_init_weights` sets them to it): with closed gates the image would not reach
        # the logits and every vision/cross-attention check here would pass vacuously.
        self.hive_kwargs = {"cross_attention_layers": [[0, 0], [1, 1]], "gate_init": 0.5}
        config = self.get_config()
        self.hidden_size = config.text_config.hidden_size
        self.num_attention_heads = config.text_config.num_attention_heads
        # As dicts, like mllama's tester: ModelTesterMixin reads their num_hidden_layers.
        self.vision_config = config.vision_config.to_dict()
        self.text_config = config.text_config.to_dict()

    def get_config(self):
        return tiny_hive_config(
            "vit",
            "llama",
            vision_kwargs={"num_layers": self.num_hidden_layers, "image_size": self.image_size, "patch_size": self.patch_size},
            text_kwargs={
                "num_layers": self.num_hidden_layers,
                "vocab_size": self.vocab_size,
                "pad_token_id": self.pad_token_id,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            **self.hive_kwargs,
        )

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return config, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        # HIVE needs no image placeholder tokens: the image enters through cross-attention, not the token sequence.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 1) + 1
        attention_mask = input_ids.ne(1).to(torch_device)  # as llava and mllama: some positions masked
        inputs_dict = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return config, inputs_dict


@require_torch
class HiveForConditionalGenerationModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (HiveModel, HiveForConditionalGeneration)
    _is_composite = True
    # The mixin skips this test for files without a "# Copyright <year>" header older than 2023 (HIVE's have none); the
    # flag is its switch for models whose `_init_weights` covers every weight, as llava's and mllama's (2023, 2024) do.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The mixin tells a base model (no loss, no training test) from a head with labels by transformers' name
        # mappings, where built-in llava and mllama are listed. HIVE is remote code: list it there for this class only.
        for mapping, class_name in (
            (modeling_auto.MODEL_MAPPING_NAMES, "HiveModel"),
            (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "HiveForConditionalGeneration"),
        ):
            patcher = mock.patch.dict(mapping, {HiveConfig.model_type: class_name})
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def setUp(self):
        self.model_tester = HiveModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=HiveConfig, has_text_modality=False, common_properties=["cross_attention_layers", "gate_init"]
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_image_reaches_the_outputs(self):
        """Guards this suite: the tester's gates are open, so the image changes what the common tests compare."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = HiveForConditionalGeneration(config).to(torch_device).eval()
        gates = [parameter for name, parameter in model.named_parameters() if name.endswith("_gate")]
        self.assertEqual(len(gates), 2 * len(config.cross_attention_layers))
        self.assertTrue(all(gate.item() == config.gate_init != 0.0 for gate in gates))
        with torch.no_grad():
            logits = model(**inputs_dict).logits
            blank = model(**{**inputs_dict, "pixel_values": torch.zeros_like(inputs_dict["pixel_values"])}).logits
        self.assertFalse(torch.allclose(logits, blank, atol=1e-4))
