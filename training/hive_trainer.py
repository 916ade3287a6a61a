"""What stages 2 and 3 share: gate and trainable-parameter logging, the non-finite guards, completed-checkpoint markers."""

import torch
from torch.distributed.tensor import DTensor
from transformers import Trainer

from .callbacks import HiveCheckpointMarkerCallback, HiveNonFiniteGuardCallback, check_finite_loss


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a parameter, also one FSDP holds as a sharded DTensor (then an all-gather, which every
    process must reach: the Trainer calls `log` on all of them)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gate_values(model) -> dict[str, float]:
    """tanh of every gate, named by block: `gate/attn_t{text_layer}_v{vision_layer}` and `gate/mlp_...`; none in
    `shared_softmax` mode, which has no gates."""
    hive = model.base_model if hasattr(model, "base_model") else model
    values = {}
    if getattr(hive.config, "cross_attention_mode", None) != "gated":  # also a study's LLaVA or BLIP-2, which have none
        return values
    for block, (vision_layer, text_layer) in zip(hive.cross_attention_layers, hive.config.cross_attention_layers):
        name = f"t{text_layer}_v{vision_layer}"
        values[f"gate/attn_{name}"] = whole(block.cross_attn_attn_gate.detach()).tanh().item()
        values[f"gate/mlp_{name}"] = whole(block.cross_attn_mlp_gate.detach()).tanh().item()
    return values


class HiveTrainer(Trainer):
    """A `Trainer` for a `HiveForConditionalGeneration`: logs the gates (tanh) at every logging step and the trainable
    parameter counts per component at the first one, and stops on a non-finite loss or gradient naming the step and
    the component. Subclasses choose what trains (`trainable_components`).

    Args:
        model: the model to train.
        args: the stage's arguments.
        components (*optional*): what answers `set_trainable(vision=, projector=, cross_attention=, llm=)` and
            `component_parameters()` for `model`; the HIVE model itself when unset. `hive ablate` passes a study
            fusion (`HiveAblationFusion`), so its LLaVA and BLIP-2 baselines train through these same trainers.
        **kwargs: as for `Trainer`.
    """

    def __init__(self, model, args, components=None, **kwargs):
        self.components = model if components is None else components
        self.trainable_counts = self.components.set_trainable(**self.trainable_components(args))
        if getattr(args, "train_llm", False) and not args.train_llm_embeddings:  # the authors' setting
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                module.requires_grad_(False)
            self.trainable_counts = self.components.set_trainable()  # the counts again, nothing else changed
        callbacks = [
            HiveCheckpointMarkerCallback(),
            HiveNonFiniteGuardCallback(self.components.component_parameters()),
            *(kwargs.pop("callbacks", None) or []),
        ]
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        self._counts_logged = False

    @classmethod
    def trainable_components(cls, args) -> dict[str, bool | None]:
        """What trains in this stage: `set_trainable`'s flags (True, False, or None to leave a component as it is)."""
        raise NotImplementedError

    def create_optimizer(self, model=None):
        """The encoder at `args.vision_learning_rate` (when set), everything else at `args.learning_rate`; weight decay
        as the Trainer applies it."""
        if self.optimizer is None and getattr(self.args, "vision_learning_rate", None) is not None:
            model = self.model
            vision = {id(p) for p in self.components.component_parameters()["vision"]}
            decay = set(self.get_decay_parameter_names(model))
            groups = []
            for is_vision, lr in ((False, self.args.learning_rate), (True, self.args.vision_learning_rate)):
                for has_decay, weight_decay in ((True, self.args.weight_decay), (False, 0.0)):
                    params = [
                        p for n, p in model.named_parameters()
                        if p.requires_grad and (id(p) in vision) == is_vision and (n in decay) == has_decay
                    ]
                    if params:
                        groups.append({"params": params, "weight_decay": weight_decay, "lr": lr})
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        check_finite_loss(loss, self.state.global_step + 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time=None) -> None:
        logs = {**logs, **gate_values(self.model)}
        if not self._counts_logged:
            logs.update({f"trainable/{name}": row["trainable"] for name, row in self.trainable_counts.items()})
            self._counts_logged = True
        super().log(logs, start_time)
