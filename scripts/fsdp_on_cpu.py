"""Runs a `hive` command with accelerate's FSDP on CPU processes, for tests and for reading the FSDP path without a GPU.

accelerate does not offer FSDP on CPUs: `AcceleratorState.__init__` (accelerate/state.py) turns `ACCELERATE_USE_FSDP`
into `DistributedType.FSDP` only inside its branch for accelerator devices (MULTI_GPU, MULTI_XPU, ...). A CPU run
(MULTI_CPU) silently gets DDP instead. This launcher lifts exactly that gate: after accelerate has set up its state,
a MULTI_CPU state with FSDP asked for becomes an FSDP state with the plugin accelerate built from the config. Everything
else (fully_shard wrapping from `_no_split_modules`, the Trainer's FSDP saving and resuming) is accelerate's and the
Trainer's own code, unchanged, over gloo. torch's FSDP2 (`fully_shard`) itself runs on CPU.

Example:
    $ accelerate launch --config_file configs/fsdp.yaml scripts/fsdp_on_cpu.py train --recipe recipes/tiny-shapes.yaml
    $ accelerate launch --config_file configs/fsdp.yaml scripts/fsdp_on_cpu.py parameter-bytes   # each rank's share
"""

import json
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

from hive_vlm.cli import main
from hive_vlm.tiny import tiny_hive_config
from modeling_hive import HiveForConditionalGeneration


def allow_fsdp_on_cpu() -> None:
    original = AcceleratorState.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        plugin = kwargs.get("fsdp_plugin")
        if asked and plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what later states copy

    AcceleratorState.__init__ = __init__


def parameter_bytes() -> dict:
    """This process's parameter bytes once accelerate has sharded a tiny-shapes-sized HIVE model, and the whole model's."""
    torch.manual_seed(0)
    width = {"hidden_size": 64}  # tiny-shapes' widths
    model = HiveForConditionalGeneration(tiny_hive_config("vit", "llama", vision_kwargs=width, text_kwargs=width))
    model.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)  # stage 2
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    accelerator = Accelerator(cpu=True)  # as the recipes' use_cpu: true
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in model.parameters())
    return {"rank": accelerator.process_index, "processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
            "local_bytes": local, "whole_bytes": whole}


if __name__ == "__main__":
    allow_fsdp_on_cpu()
    if sys.argv[1:] == ["parameter-bytes"]:
        print(json.dumps(parameter_bytes()), flush=True)
        sys.exit(0)
    sys.argv = ["hive", *sys.argv[1:]]
    sys.exit(main())
