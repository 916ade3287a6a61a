"""Callbacks every HIVE stage runs with: completed-checkpoint markers and the non-finite gradient guard."""

import os
import re
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hive_vlm.files import write_atomically


COMPLETE_MARKER = "hive_checkpoint_complete"


class HiveCheckpointMarkerCallback(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it (model, optimizer, RNG, state).

    A checkpoint without the marker was cut short (a kill during the save) and is never resumed from.
    """

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                # The Trainer's files reach the disk before the marker does, so a power loss cannot leave a
                # marked checkpoint whose weights were still in the page cache.
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    descriptor = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(descriptor)
                    finally:
                        os.close(descriptor)
                write_atomically(folder / COMPLETE_MARKER, f"{state.global_step}\n")


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest checkpoint folder carrying the completion marker; incomplete ones are set aside, never used."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = []
    for folder in output_dir.iterdir():
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name)
        if match and folder.is_dir():
            if (folder / COMPLETE_MARKER).exists():
                steps.append((int(match.group(1)), folder))
            else:
                target, attempt = folder.with_name(f"incomplete-{folder.name}"), 1
                while target.exists():  # the same step was cut short before, in an earlier kill
                    target, attempt = folder.with_name(f"incomplete-{folder.name}.{attempt}"), attempt + 1
                folder.rename(target)
    return str(max(steps)[1]) if steps else None


class HiveNonFiniteGuardCallback(TrainerCallback):
    """Stops training before the optimizer step when a gradient is NaN or inf, naming the step and the component.

    The component named is the one whose gradient was non-finite as backward wrote it: gradient clipping, which runs
    before the optimizer step, multiplies every gradient by the same NaN factor and would blame them all.

    Args:
        components: `{component name: [parameters]}`, e.g. `model.component_parameters()`.
    """

    def __init__(self, components: dict):
        self.component_of = {id(p): name for name, params in components.items() for p in params}
        self.parameters = {id(p): p for params in components.values() for p in params}
        self.finite_after_backward = {}  # id(p) -> 0-d bool tensor, read only when a step goes wrong (no sync per step)
        for p in self.parameters.values():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._record)

    def _record(self, parameter):
        self.finite_after_backward[id(parameter)] = torch.isfinite(parameter.grad).all()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = sorted(
            {self.component_of[key] for key, p in self.parameters.items() if p.grad is not None and not torch.isfinite(p.grad).all()}
        )
        after_backward, self.finite_after_backward = self.finite_after_backward, {}
        if bad:
            origin = sorted({self.component_of[key] for key, finite in after_backward.items() if not finite})
            raise FloatingPointError(
                f"non-finite gradient at step {state.global_step + 1} in component(s) {origin or bad}; the optimizer step was "
                "skipped and the weights are unchanged. Lower the learning rate, enable max_grad_norm or check the data."
            )


def check_finite_loss(loss: torch.Tensor, step: int) -> None:
    """Raises naming the step when the loss is NaN or inf (called before backward)."""
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(
            f"non-finite loss ({loss.detach().float().item()}) at step {step}, component 'loss'; training stopped before "
            "the weights were touched. Check the inputs (NaN pixels, labels) and the learning rate."
        )
