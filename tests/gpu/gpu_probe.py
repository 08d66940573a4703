"""A callback for the GPU fit test (``--trainer.callbacks+=gpu_probe.DtypeProbe``): records the dtypes of the batch
the step receives and, at the end, DeepSpeed's fp32 master weights of the denoiser. Not a test module."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file


class DtypeProbe(pl.Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.seen: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen is None:
            self.seen = {
                "device": str(batch.latent_mean.device),
                "batch": {
                    f.name: str(getattr(batch, f.name).dtype)
                    for f in fields(batch)
                    if isinstance(getattr(batch, f.name), torch.Tensor)
                },
            }

    def on_train_end(self, trainer, pl_module) -> None:
        from deepspeed.utils import safe_get_full_fp32_param

        master = {
            n: safe_get_full_fp32_param(p).detach().cpu().contiguous()
            for n, p in pl_module.denoiser.named_parameters()
            if p.requires_grad
        }
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.seen))
            save_file(master, str(self.out.parent / "master_fp32.safetensors"))
