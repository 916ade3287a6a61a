"""Stage 1: SimMIM-style masked image modelling on the vision encoder alone.

Adapted from SimMIM (Xie et al., 2022): random blocks are masked, a linear decoder predicts the masked patches'
(normalised) pixels from the encoder's last hidden states, and an L1 loss counts the masked patches only. For a
multi-scale encoder (Swin, ConvNeXt) each last-stage token predicts the block of pixels it covers (its stride), as
SimMIM does for Swin; mask blocks must then be multiples of that stride.
"""

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, Trainer
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import ModelOutput

from modeling_hive.backbones_hive import as_tokens, encoder_outputs_on_meta, eval_mode
from modeling_hive.inspection_hive import parameters_reached

from .callbacks import HiveCheckpointMarkerCallback, HiveNonFiniteGuardCallback, check_finite_loss


@dataclass
class HiveMIMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None  # (B, num_tokens, stride**2 * channels)


def supports_mask_token(encoder: nn.Module) -> bool:
    """Whether the encoder replaces masked patches with its own mask token (`bool_masked_pos`)."""
    takes_mask = "bool_masked_pos" in inspect.signature(encoder.forward).parameters
    embeddings = getattr(encoder, "embeddings", None)
    return takes_mask and getattr(embeddings, "mask_token", None) is not None


def load_encoder_for_mim(source: str, dtype=None) -> nn.Module:
    """Loads an encoder with a mask token when its class offers one (ViT's `use_mask_token`)."""
    config = AutoConfig.from_pretrained(source)
    config = getattr(config, "vision_config", None) or config
    encoder_class = MODEL_MAPPING[type(config)]
    kwargs = {"use_mask_token": True} if "use_mask_token" in inspect.signature(encoder_class.__init__).parameters else {}
    return encoder_class.from_pretrained(source, dtype=dtype, **kwargs)


class HiveMIMModel(nn.Module):
    """A vision encoder and SimMIM's light decoder (one linear layer per patch token)."""

    def __init__(self, encoder: nn.Module, norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = encoder
        config = encoder.config
        self.patch_size = config.patch_size
        self.num_channels = getattr(config, "num_channels", 3)
        self.norm_pix_loss = norm_pix_loss
        self.uses_mask_token = supports_mask_token(encoder)
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        # The last hidden state's grid, from a forward on the meta device: a ViT's patches (after any CLS or register
        # tokens), or a multi-scale encoder's last stage, each token covering `stride` pixels square.
        with eval_mode(encoder), torch.no_grad():
            last = as_tokens(encoder_outputs_on_meta(encoder, config)[0].last_hidden_state)
        num_patches = (size // self.patch_size) ** 2
        self.stride = self.patch_size if last.shape[1] >= num_patches else size // math.isqrt(last.shape[1])
        self.decoder = nn.Linear(last.shape[-1], self.stride**2 * self.num_channels)
        # Weights the reconstruction never reaches (a pooler, a pooling head) stay frozen rather than "train" unchanged.
        parameters = [p for p in encoder.parameters() if p.requires_grad]
        probe = torch.zeros(1, self.num_channels, size, size, dtype=parameters[0].dtype)
        mask = (torch.arange(num_patches) % 2 == 0)[None]  # half masked, so the mask token is in the graph too
        extra = {"bool_masked_pos": mask} if self.uses_mask_token else {}
        reached = parameters_reached(encoder(pixel_values=probe, **extra).last_hidden_state.sum(), parameters)
        for parameter, is_reached in zip(parameters, reached):
            parameter.requires_grad_(is_reached)

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixel_values.shape
        p = self.stride
        patches = pixel_values.reshape(batch, channels, height // p, p, width // p, p)
        return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, (height // p) * (width // p), p * p * channels)  # (B, N, p*p*C)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor) -> HiveMIMOutput:
        batch, _, height, width = pixel_values.shape
        p = self.patch_size
        num_patches = (height // p) * (width // p)
        if bool_masked_pos.shape != (batch, num_patches):
            raise ValueError(f"bool_masked_pos must have shape ({batch}, {num_patches}), got {tuple(bool_masked_pos.shape)}.")
        mask = bool_masked_pos.bool()
        if self.uses_mask_token:
            outputs = self.encoder(pixel_values=pixel_values, bool_masked_pos=mask)
        else:
            # Pixel-level masking for encoders without a mask token: masked patches become the mean (0 after normalisation).
            pixel_mask = mask.reshape(batch, 1, height // p, 1, width // p, 1).expand(-1, 1, -1, p, -1, p)
            pixel_mask = pixel_mask.reshape(batch, 1, height, width)
            outputs = self.encoder(pixel_values=pixel_values.masked_fill(pixel_mask, 0.0))
        step = self.stride // p  # patches per token side: 1 for a ViT
        token_mask = mask.reshape(batch, height // p, width // p)[:, ::step, ::step]  # (B, H / stride, W / stride)
        expanded = token_mask.repeat_interleave(step, dim=1).repeat_interleave(step, dim=2).reshape(batch, -1)
        if not torch.equal(expanded, mask):
            raise ValueError(
                f"bool_masked_pos masks blocks smaller than the {self.stride}-pixel area each of the encoder's last "
                f"tokens reconstructs; mask blocks of a multiple of {self.stride} pixels (stage1.mask_patch_size)."
            )
        token_mask = token_mask.reshape(batch, -1)
        num_tokens = token_mask.shape[1]
        tokens = as_tokens(outputs.last_hidden_state)[:, -num_tokens:]  # (B, N, D): patch tokens come after any CLS/registers
        reconstruction = self.decoder(tokens)
        target = self.patchify(pixel_values)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (reconstruction - target.to(reconstruction.dtype)).abs().mean(-1)  # (B, N)
        loss = (per_patch * token_mask).sum() / token_mask.sum().clamp(min=1)
        return HiveMIMOutput(loss=loss, reconstruction=reconstruction)


class HiveMIMTrainer(Trainer):
    """Stage 1 trainer: masked image modelling of the encoder. Saves a plain encoder that `AutoModel` loads.

    Args:
        model (`HiveMIMModel`): encoder plus decoder.
        args (`HiveMIMConfig`): training arguments.
        **kwargs: as for `Trainer` (data_collator: `HiveMaskedImageCollator`, train_dataset with an `image` column).

    Example:
        >>> trainer = HiveMIMTrainer(model=HiveMIMModel(encoder), args=HiveMIMConfig("out/stage1", max_steps=10),
        ...                          data_collator=collator, train_dataset=images)  # doctest: +SKIP
        >>> trainer.train(); trainer.save_encoder("out/stage1/model")  # doctest: +SKIP
    """

    def __init__(self, model: HiveMIMModel, args, **kwargs):
        components = {"vision": list(model.encoder.parameters()), "decoder": list(model.decoder.parameters())}
        callbacks = [HiveCheckpointMarkerCallback(), HiveNonFiniteGuardCallback(components), *(kwargs.pop("callbacks", None) or [])]
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        check_finite_loss(loss, self.state.global_step + 1)
        return (loss, outputs) if return_outputs else loss

    def encoder_state_dict(self) -> dict:
        """The encoder's weights, whole: accelerate gathers a sharded (FSDP) model's first, so every process calls this."""
        state_dict = self.accelerator.get_state_dict(self.model)
        return {name.removeprefix("encoder."): tensor for name, tensor in state_dict.items() if name.startswith("encoder.")}

    def save_encoder(self, output_dir: str, image_processor=None, state_dict: dict | None = None) -> None:
        """Writes the trained encoder alone, loadable with `AutoModel.from_pretrained(output_dir)`; under FSDP pass the
        `encoder_state_dict()` every process gathered."""
        encoder = self.accelerator.unwrap_model(self.model).encoder
        encoder.save_pretrained(output_dir, state_dict=state_dict if state_dict is not None else self.encoder_state_dict())
        if image_processor is not None:
            image_processor.save_pretrained(output_dir)
