"""A callback the strategy tests add to ``fit`` runs (``--trainer.callbacks+=strategy_probe.RunProbe``).

It records, per rank, the loss of every optimizer step, a fingerprint of the denoiser's weights before, during
(as the validation sample clips are rendered) and after each validation, and at the end of training writes what the
tests compare against: the denoiser's fp32 weights gathered from the strategy (DeepSpeed: the fp32 master copy,
assembled from the ZeRO partitions with ``safe_get_full_fp32_param``), the EMA shadow, and facts about the frozen
encoders and the partitioned parameters. Not a test module: imported by the ``fit``
subprocesses with ``tests/training`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file


class RunProbe(pl.Callback):
    """Args:
    out_dir: where ``losses-rank<r>.json``, ``final_fp32.safetensors``, ``ema.safetensors`` and ``facts.json`` go.
    build_vae_early: build the frozen VAE in ``setup``, before the strategy wraps (and ZeRO-3 partitions) the
        module, to check that it stays outside the strategy's reach.
    nan_latents_at_step: fill the latents of ``nan_rank``'s batch with NaN at this step (a non-finite loss there).
    nan_rank: see ``nan_latents_at_step``.
    pause_in_save_at_step: when the checkpoint of this step is being written (inside ``CrashSafeCheckpoint.save``,
        after ``step-<N>.tmp/`` exists, before ``state.ckpt`` is written), touch ``paused-in-save`` and sleep, so a
        test can SIGKILL the run there.
    """

    def __init__(
        self,
        out_dir: str,
        build_vae_early: bool = False,
        pause_in_save_at_step: int = -1,
        nan_latents_at_step: int = -1,
        nan_rank: int = 0,
    ):
        self.out_dir = Path(out_dir)
        self.nan_latents_at_step, self.nan_rank = nan_latents_at_step, nan_rank
        self.build_vae_early = build_vae_early
        self.pause_in_save_at_step = pause_in_save_at_step
        self.losses: list[list[float]] = []
        self.keys: list[list[str]] = []
        self.validations: list[dict] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.build_vae_early:
            pl_module.vae()
        render = pl_module.render_validation_clips

        def watched_render(batch, num_samples):  # runs inside the strategy's wrapper, on every rank
            ema = next((c for c in trainer.callbacks if type(c).__name__ == "EMA"), None)
            self.validations[-1].update(
                rendered=None if _is_fsdp(trainer) else _weights_sum(pl_module),  # FSDP: no gather inside forward
                ema=_sum(ema.shadow.values()) if ema is not None and ema.shadow else None,
                rendered_keys=list(batch.keys[:num_samples]),
            )
            return render(batch, num_samples)

        pl_module.render_validation_clips = watched_render

    def on_validation_start(self, trainer, pl_module) -> None:
        self.validations.append({"step": trainer.global_step, "before": _weights_sum(pl_module, trainer)})

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations[-1]["after"] = _weights_sum(pl_module, trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.nan_latents_at_step and trainer.global_rank == self.nan_rank:
            batch.latent_mean.fill_(float("nan"))  # this rank's latents, hence its loss, become NaN

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append([trainer.global_step, float(loss.detach())])
        self.keys.append(list(batch.keys))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.global_step == self.pause_in_save_at_step:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / f"losses-rank{trainer.global_rank}.json").write_text(json.dumps(self.losses))
            (self.out_dir / "paused-in-save").touch()
            time.sleep(600)  # the test kills the process here

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (self.out_dir / f"losses-rank{rank}.json").write_text(json.dumps(self.losses))
        (self.out_dir / f"keys-rank{rank}.json").write_text(json.dumps(self.keys))
        (self.out_dir / f"validations-rank{rank}.json").write_text(json.dumps(self.validations))
        params = dict(pl_module.denoiser.named_parameters())
        if "DeepSpeed" in type(trainer.strategy).__name__:
            from deepspeed.utils import safe_get_full_fp32_param

            # A collective under every ZeRO stage: all ranks call it for every parameter, in the same order.
            weights = {n: safe_get_full_fp32_param(p).detach().cpu().clone() for n, p in params.items()}
        elif "FSDP" in type(trainer.strategy).__name__:
            from torch.distributed.fsdp import FullyShardedDataParallel
            from torch.distributed.fsdp._common_utils import clean_tensor_name

            with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
                weights = {
                    clean_tensor_name(n): p.detach().float().cpu().clone()
                    for n, p in pl_module.denoiser.named_parameters()
                }
        else:
            weights = {n: p.detach().float().cpu().clone() for n, p in params.items()}
        weights.update(
            {
                n: b.detach().float().cpu().clone()
                for n, b in pl_module.denoiser.named_buffers()
                if n in pl_module.denoiser.state_dict()
            }
        )
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        optimizer_numel = _optimizer_numel(engine) if engine is not None else None  # a collective: every rank
        if rank != 0:
            return
        save_file(weights, str(self.out_dir / "final_fp32.safetensors"))
        ema = next((c for c in trainer.callbacks if type(c).__name__ == "EMA"), None)
        if ema is not None and ema.shadow:
            save_file({k: v.cpu().contiguous() for k, v in ema.shadow.items()}, str(self.out_dir / "ema.safetensors"))
        frozen = {
            name: [(n, tuple(p.shape), hasattr(p, "ds_id")) for n, p in module.named_parameters()][:3]
            for name, module in pl_module._frozen.items()
        }
        facts = {
            "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size,
            "module_parameter_names": sorted(n for n, _ in pl_module.named_parameters()),
            "partitioned": sum(hasattr(p, "ds_id") for p in params.values()),
            "num_parameters": len(params),
            "frozen_modules": frozen,
            "frozen_params_partitioned": any(
                hasattr(p, "ds_id") for m in pl_module._frozen.values() for p in m.parameters()
            ),
            "skipped_steps": pl_module.numerics.num_skipped,
            "zero_stage": engine.zero_optimization_stage() if engine is not None else None,
            "optimizer_numel": optimizer_numel,
            "trainable_numel": sum(
                p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params.values() if p.requires_grad
            ),
        }
        (self.out_dir / "facts.json").write_text(json.dumps(facts, indent=1))


def _sum(tensors) -> float:
    return float(sum(t.detach().double().sum() for t in tensors))


def _is_fsdp(trainer: pl.Trainer) -> bool:
    return "FSDP" in type(trainer.strategy).__name__


def _weights_sum(pl_module: pl.LightningModule, trainer: pl.Trainer | None = None) -> float:
    """float64 sum of the denoiser's trainable weights as the module holds them (a collective under ZeRO-3 and,
    given ``trainer``, FSDP: every rank calls it)."""
    import contextlib

    params = [p for p in pl_module.denoiser.parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    elif trainer is not None and _is_fsdp(trainer):
        from torch.distributed.fsdp import FullyShardedDataParallel

        gathered = FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False)
    else:
        gathered = contextlib.nullcontext()
    with gathered, torch.no_grad():
        return _sum(p for p in pl_module.denoiser.parameters() if p.requires_grad)


def _optimizer_numel(engine) -> int:
    """Elements of the fp32 partitions the ZeRO optimizer updates, summed over ranks (includes alignment padding)."""
    optimizer = engine.optimizer
    groups = getattr(optimizer, "fp32_partitioned_groups_flat", None) or optimizer.single_partition_of_fp32_groups
    total = torch.tensor([sum(g.numel() for g in groups)], dtype=torch.long)
    torch.distributed.all_reduce(total)
    return int(total.item())
