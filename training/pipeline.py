"""Runs a recipe's stages in order; each stage starts from the previous stage's output.

Layout of `output_dir`:
    processor/            the HiveProcessor (image processor, tokenizer, chat template)
    data/shapes/          hive-shapes, when a stage trains on it
    backbones/{vision,text}/  backbones built from configs (random weights), when the recipe gives configs
    stage0/               with a `stage0` section: Trainer checkpoints; stage0/model/ is the pretrained LLM (and
                          its tokenizer), which stage 2 then connects to the encoder
    stage1/               Trainer checkpoints; stage1/model/ is the MIM-trained encoder (AutoModel loads it)
    stage2/, stage3/      Trainer checkpoints; stageN/model/ is a full HIVE folder. With LoRA, stage3/adapter/ (PEFT
                          format) and stage3/base/ (its base HIVE folder) too; stage3/model/ is the two merged
    final/                the last stage's HIVE folder, ready for AutoModelForImageTextToText and the VQA pipeline
Every `model/`, `base/`, `adapter/` and `final/` folder appears whole or not at all (written aside, then renamed).
"""

import glob
import logging
import shutil
from pathlib import Path

import datasets
import torch
from accelerate import PartialState
from peft import prepare_model_for_kbit_training
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, ViTImageProcessorPil, set_seed

from hive_vlm.data import loaders
from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator, HiveMaskedImageCollator
from hive_vlm.data.report import HiveDataReport
from hive_vlm.data.shapes import HiveShapesConfig, generate_shapes
from hive_vlm.data.shapes_layouts import SHORT_ANSWER_PROMPT, to_caption_pairs, to_conversations
from hive_vlm.data.schema import message_text
from hive_vlm.data.shapes_text import shapes_conversations
from hive_vlm.files import atomic_folder
from hive_vlm.data.tokenizer import build_tokenizer
from modeling_hive import HiveForConditionalGeneration, HiveProcessor

from .alignment_config import HiveAlignmentConfig
from .alignment_trainer import HiveAlignmentTrainer
from .callbacks import last_complete_checkpoint
from .finetune_trainer import HiveFinetuneTrainer, merge_adapter
from .lm_trainer import HiveLMTrainer, pretraining_sequences
from .mim_trainer import HiveMIMModel, HiveMIMTrainer, load_encoder_for_mim
from .recipe import HiveRecipe


logger = logging.getLogger(__name__)
SHAPES_DEFAULTS = {"seed": 0, "num_train": 2000, "num_validation": 200, "num_test": 200, "num_test_compositional": 200}


class HiveRecipeRun:
    """One run of a recipe in one output folder.

    Args:
        recipe (`HiveRecipe`): the validated recipe.
        output_dir (`str`, *optional*): overrides `recipe.output_dir`.
        resume (`bool`): continue an interrupted run: finished stages are kept, an unfinished one resumes from its
            last complete checkpoint.

    Example:
        >>> from hive_vlm.training.recipe import load_recipe
        >>> run = HiveRecipeRun(load_recipe("recipes/tiny-shapes.yaml"), "outputs/tiny")  # doctest: +SKIP
        >>> run.run()  # doctest: +SKIP
        'outputs/tiny/final'
    """

    def __init__(self, recipe: HiveRecipe, output_dir: str | None = None, resume: bool = False):
        self.recipe = recipe
        self.output_dir = Path(output_dir or recipe.output_dir)
        self.resume = resume
        self.report = HiveDataReport()
        self.dtype = getattr(torch, recipe.model.dtype) if recipe.model.dtype else None
        self.state = PartialState()
        self._conversations = None

    # ------------------------------------------------------------------------------------------------ stages

    def run(self, stages=None) -> str:
        """Runs the chosen stages and writes `final/`; returns its path. `hive train` then writes its model card and,
        when a stage sets `push_to_hub`, uploads it (`hive_vlm.hub.push.push_training_run`)."""
        stages = sorted(set(self.recipe.stages if stages is None else stages))
        if 0 in stages and self.recipe.stage0 is None:
            raise ValueError("stage 0 needs a `stage0` section in the recipe (the LLM's pretraining settings).")
        self.check_data(stages)
        with self.state.main_process_first():  # under `accelerate launch`, one process prepares the shared folders
            self.output_dir.mkdir(parents=True, exist_ok=True)
            processor = self.processor()
            if 1 in stages or 2 in stages:
                self.vision_source()
            if 0 in stages or 2 in stages:
                self.text_source()
        last = None
        for stage in stages:
            last = getattr(self, f"run_stage{stage}")(processor)
        if last is not None and stages[-1] > 1:
            final = self.output_dir / "final"
            if self.state.is_main_process:
                with atomic_folder(final) as folder:
                    shutil.copytree(last, folder, dirs_exist_ok=True)
                logger.info("HIVE model written to %s", final)
            self.state.wait_for_everyone()
            last = final
        summary = self.report.summary()
        if summary:
            logger.warning("data report: %s", summary)
        return str(last) if last is not None else ""

    def check_data(self, stages) -> None:
        """Fails before any work when a chosen stage's data path does not exist, not when that stage starts."""
        for stage in sorted(set(stages) - {0} | ({2, 3} if 0 in stages else set())):  # stage 0 reads stages 2 and 3's text
            source = getattr(self.recipe.data, f"stage{stage}")
            if source is None or "shapes" in (source.source, source.format):
                continue
            if not (Path(source.source).exists() or glob.glob(source.source)):
                raise ValueError(f"data.stage{stage}.source: {source.source!r} does not exist (no file or folder matches it).")
            if source.image_root is not None and not Path(source.image_root).is_dir():
                raise ValueError(f"data.stage{stage}.image_root: {source.image_root!r} is not a folder.")

    def _stage_dir(self, stage: int) -> tuple[Path, bool]:
        """The stage folder, and whether the stage already finished (its model/ exists)."""
        folder = self.output_dir / f"stage{stage}"
        if (folder / "model").is_dir():
            if not self.resume:
                raise ValueError(
                    f"{folder / 'model'} already exists: stage {stage} finished in an earlier run. Pass --resume to keep "
                    "finished stages, or choose another --output-dir."
                )
            logger.info("stage %d already finished in %s", stage, folder)
            return folder, True
        if folder.is_dir() and any(folder.glob("checkpoint-*")) and not self.resume:
            raise ValueError(f"{folder} holds checkpoints of an unfinished stage {stage}; pass --resume to continue it, or choose another --output-dir.")
        return folder, False

    def _train(self, trainer, folder: Path) -> None:
        checkpoint = None
        if self.resume:
            with self.state.main_process_first():
                checkpoint = last_complete_checkpoint(folder)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        trainer.train(resume_from_checkpoint=checkpoint)

    def run_stage0(self, processor) -> Path:
        folder, done = self._stage_dir(0)
        if done:
            return folder / "model"
        args = self.recipe.stage_arguments(0, str(folder), push_to_hub=False)
        tokenizer = processor.tokenizer
        sequences = self.pretraining_sequences(processor, args.max_length or self.recipe.data.max_length)
        logger.info("stage 0: %d sequences, %d tokens", len(sequences), sum(map(len, sequences)))
        set_seed(args.seed)
        model = AutoModelForCausalLM.from_pretrained(self.text_source(), dtype=self.dtype)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a pad token the processor added
            model.resize_token_embeddings(len(tokenizer))
        trainer = HiveLMTrainer(model, args, tokenizer, sequences)
        self._train(trainer, folder)
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        if self.state.is_main_process:
            with atomic_folder(folder / "model") as out:
                trainer.accelerator.unwrap_model(trainer.model).save_pretrained(out, state_dict=state_dict)
                tokenizer.save_pretrained(out)
        self.state.wait_for_everyone()
        return folder / "model"

    def pretraining_sequences(self, processor, max_length: int) -> list[list[int]]:
        """Stage 0's text: the captions of stage 2's data as stage 2 prompts them, and the chats of stage 3's data."""
        captions = (row["text"] for row in self.dataset(2).select_columns(["text"]))
        chats = (row["messages"] for row in self.dataset(3).select_columns(["messages"]))
        prompt = self.recipe.stage2.get("caption_prompt", HiveAlignmentConfig.caption_prompt)
        return pretraining_sequences(captions, chats, processor.tokenizer, processor.chat_template, max_length, prompt)

    def run_stage1(self, processor) -> Path:
        folder, done = self._stage_dir(1)
        if done:
            return folder / "model"
        args = self.recipe.stage_arguments(1, str(folder), push_to_hub=False)
        set_seed(args.seed)
        encoder = load_encoder_for_mim(self.vision_source(), dtype=self.dtype)
        model = HiveMIMModel(encoder, norm_pix_loss=args.norm_pix_loss)
        # Masked blocks default to what one last-layer token reconstructs: a patch for a ViT, a last-stage cell for Swin.
        collator = HiveMaskedImageCollator(
            processor, patch_size=encoder.config.patch_size, mask_ratio=args.mask_ratio,
            mask_patch_size=args.mask_patch_size or model.stride, report=self.report,
        )
        trainer = HiveMIMTrainer(model=model, args=args, data_collator=collator, train_dataset=self.dataset(1))
        self._train(trainer, folder)
        encoder_state = trainer.encoder_state_dict()
        if self.state.is_main_process:
            with atomic_folder(folder / "model") as out:
                trainer.save_encoder(out, processor.image_processor, state_dict=encoder_state)
        self.state.wait_for_everyone()
        return folder / "model"

    def run_stage2(self, processor) -> Path:
        folder, done = self._stage_dir(2)
        if done:
            return folder / "model"
        args = self.recipe.stage_arguments(2, str(folder), push_to_hub=False)
        stage1 = self.output_dir / "stage1" / "model"
        vision = str(stage1) if stage1.is_dir() else self.vision_source()
        set_seed(args.seed)  # the new projectors and cross-attention blocks start the same in every process and run
        model = HiveForConditionalGeneration.from_backbones(vision, self.llm_source(), torch_dtype=self.dtype, **self.recipe.model.hive)
        if len(processor.tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(processor.tokenizer))
        collator = HiveCaptionCollator(processor, prompt=args.caption_prompt, max_length=args.max_length or self.recipe.data.max_length, report=self.report)
        trainer = HiveAlignmentTrainer(model, args, data_collator=collator, train_dataset=self.dataset(2), processing_class=processor)
        self._train(trainer, folder)
        return self._save_trained(trainer, processor, folder / "model")

    def run_stage3(self, processor) -> Path:
        folder, done = self._stage_dir(3)
        if done:
            return folder / "model"
        stage2 = self.output_dir / "stage2" / "model"
        if not stage2.is_dir():
            raise ValueError(f"stage 3 starts from stage 2's model, and {stage2} does not exist; run --stage 2 first (or --stage all).")
        args = self.recipe.stage_arguments(3, str(folder), push_to_hub=False)
        quantization_config = args.quantization_config()
        model = HiveForConditionalGeneration.from_pretrained(stage2, dtype=self.dtype, quantization_config=quantization_config)
        if quantization_config is not None:  # QLoRA: peft's preparation of a quantized model (its norms in float32)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.activation_checkpointing)
        collator = HiveChatCollator(processor, max_length=args.max_length or self.recipe.data.max_length, report=self.report)
        trainer = HiveFinetuneTrainer(model, args, data_collator=collator, train_dataset=self.dataset(3), processing_class=processor)
        self._train(trainer, folder)
        if trainer.lora_model is None:
            return self._save_trained(trainer, processor, folder / "model")
        # The adapter and its base (trained encoder and cross-attention, unadapted LLM) in PEFT's layout, then the
        # merged model, made from those two exactly as a user would.
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # every process: gathers sharded weights
        if self.state.is_main_process:
            with atomic_folder(folder / "adapter") as out:
                trainer.save_adapter(out, base_model_name_or_path=str(folder / "base"), state_dict=state_dict)
        base_state_dict = trainer.base_state_dict(state_dict)
        base_model = trainer.unload_lora()
        if quantization_config is not None:
            # The adapter's base is the unquantized stage-2 LLM with this stage's encoder, projectors and blocks: the
            # LoRA then merges into full-precision weights, not into their 4-bit or 8-bit rounding.
            base_model = HiveForConditionalGeneration.from_pretrained(stage2, dtype=self.dtype)
            trained = {
                name: tensor
                for name, tensor in base_state_dict.items()
                if not name.startswith("model.language_model.") and name != "lm_head.weight"
            }
            unexpected = base_model.load_state_dict(trained, strict=False).unexpected_keys
            if unexpected:
                raise RuntimeError(f"stage 3's trained weights do not fit the stage-2 model: {unexpected[:5]}")
            base_state_dict = None
        base = self._save_hive(base_model, processor, folder / "base", base_state_dict)
        model = merge_adapter(HiveForConditionalGeneration.from_pretrained(base), folder / "adapter")
        return self._save_hive(model, processor, folder / "model")

    def _save_trained(self, trainer, processor, path: Path) -> Path:
        """The trainer's model as a HIVE folder at `path`. accelerate gathers the weights first, which a sharded (FSDP)
        model needs from every process; the main one writes them."""
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        return self._save_hive(trainer.accelerator.unwrap_model(trainer.model), processor, path, state_dict)

    def _save_hive(self, model, processor, path: Path, state_dict=None) -> Path:
        if self.state.is_main_process:
            with atomic_folder(path) as out:
                model.save_pretrained(out, state_dict=state_dict)
                processor.save_pretrained(out)
        self.state.wait_for_everyone()
        return path

    # ------------------------------------------------------------------------------------- backbones & data

    def vision_source(self) -> str:
        """The encoder's Hub id or folder; a config-built encoder is written once to backbones/vision."""
        model = self.recipe.model
        if model.vision_model:
            return model.vision_model
        path = self.output_dir / "backbones" / "vision"
        if not path.is_dir():
            config = AutoConfig.for_model(**model.vision_config)
            torch.manual_seed(self.recipe.seed)
            with atomic_folder(path) as out:
                AutoModel.from_config(config).save_pretrained(out)
        return str(path)

    def llm_source(self) -> str:
        """The LLM stage 2 connects: stage 0's model when the recipe has a stage 0, else the recipe's LLM."""
        if self.recipe.stage0 is None:
            return self.text_source()
        stage0 = self.output_dir / "stage0" / "model"
        if not stage0.is_dir():
            raise ValueError(f"the recipe pretrains its LLM in stage 0, and {stage0} does not exist; run --stage 0 first (or --stage all).")
        return str(stage0)

    def text_source(self) -> str:
        """The LLM's Hub id or folder; a config-built LLM (sized to the built tokenizer) is written to backbones/text."""
        model = self.recipe.model
        if model.text_model:
            return model.text_model
        path = self.output_dir / "backbones" / "text"
        if not path.is_dir():
            tokenizer = self.processor().tokenizer
            values = {**model.text_config, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                      "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
            config = AutoConfig.for_model(**values)
            torch.manual_seed(self.recipe.seed)
            with atomic_folder(path) as out:
                AutoModelForCausalLM.from_config(config).save_pretrained(out)
                tokenizer.save_pretrained(out)
        return str(path)

    def processor(self) -> HiveProcessor:
        """The run's processor, built once and saved in processor/ (later calls and resumed runs reload it)."""
        path = self.output_dir / "processor"
        if path.is_dir():
            return HiveProcessor.from_pretrained(path)
        processor = self.build_processor()
        with atomic_folder(path) as out:
            processor.save_pretrained(out)
        return processor

    def build_processor(self) -> HiveProcessor:
        """The backbones' own processors (an encoder built from a config gets a ViT-style one of its image size), or for
        a `tokenizer: shapes` recipe a word-level tokenizer built from the data."""
        model = self.recipe.model
        if model.text_model and self.recipe.data.tokenizer is None:
            vision = model.vision_model or self.vision_source()
            if not model.vision_model and not (Path(vision) / "preprocessor_config.json").exists():
                size = model.vision_config.get("image_size", 224)
                ViTImageProcessorPil(size={"height": size, "width": size}).save_pretrained(vision)
            processor = HiveProcessor.from_backbones(vision, model.text_model)
        else:
            if model.vision_model:
                image_processor = AutoImageProcessor.from_pretrained(model.vision_model, backend="pil")
            else:
                size = model.vision_config.get("image_size", 224)
                image_processor = ViTImageProcessorPil(size={"height": size, "width": size})
            tokenizer = build_tokenizer(self.tokenizer_corpus())
            processor = HiveProcessor(image_processor=image_processor, tokenizer=tokenizer)
        return processor

    def tokenizer_corpus(self):
        if self.recipe.data.tokenizer != "shapes":
            raise ValueError(f"data.tokenizer: {self.recipe.data.tokenizer!r} is not supported; use 'shapes' or give a text_model.")
        train = self.shapes()["train"]
        yield self.recipe.stage2.get("caption_prompt", HiveAlignmentConfig.caption_prompt)
        yield SHORT_ANSWER_PROMPT
        for caption in train["caption"]:
            yield caption
        for questions in train["questions"]:
            for question in questions:
                yield question["question"]
                yield question["answer"]
        if self.turns_per_chat:  # the chats' words: the MME and ScienceQA layouts' prompts and the letters
            for messages in self.conversations()["messages"]:
                for message in messages:
                    yield message_text(message)

    @property
    def turns_per_chat(self) -> int | None:
        """`data.shapes.turns_per_chat`: stage 3 trains on `shapes_conversations` chats of that many turns; unset, on
        one chat per scene with all its questions (`to_conversations`)."""
        return self.recipe.data.shapes.get("turns_per_chat")

    def conversations(self) -> datasets.Dataset:
        """The stage-3 chats of hive-shapes' train split in the benchmark layouts (`shapes_conversations`), built once."""
        if self._conversations is None:
            self._conversations = shapes_conversations(self.shapes()["train"], self.recipe.seed, self.turns_per_chat)
        return self._conversations

    def shapes(self) -> datasets.DatasetDict:
        """hive-shapes as the recipe sets it up, generated once into data/shapes."""
        path = self.output_dir / "data" / "shapes"
        if not path.is_dir():
            settings = {**SHAPES_DEFAULTS, **self.recipe.data.shapes}
            settings.pop("turns_per_chat", None)
            generator = {k: settings.pop(k) for k in list(settings) if k in HiveShapesConfig.__dataclass_fields__}
            with atomic_folder(path) as out:
                generate_shapes(config=HiveShapesConfig(**generator), **settings).save_to_disk(str(out))
        return datasets.load_from_disk(str(path))

    def dataset(self, stage: int):
        """The training data of a stage, in the schema its collator reads."""
        source = getattr(self.recipe.data, f"stage{stage}")
        if source is None or source.source == "shapes" or source.format == "shapes":
            name = source.split if source else "train"
            split = self.shapes()[name]
            if stage == 1:
                return split.select_columns(["image"])
            if stage == 2:
                return to_caption_pairs(split)
            return self.conversations() if self.turns_per_chat and name == "train" else to_conversations(split)
        common = dict(streaming=source.streaming, strict=source.strict, report=self.report)
        if stage == 1:
            return loaders.load_images(source.source, format=source.format, split=source.split, **common)
        if stage == 2:
            return loaders.load_image_text_pairs(source.source, format=source.format, split=source.split, **common)
        return loaders.load_conversations(source.source, image_root=source.image_root, **common)
