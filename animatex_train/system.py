"""The Lightning system: wires the frozen encoders, the Animate-X denoiser and the diffusion objective.

Models stay pure ``nn.Module`` s; this module owns the step. Parallelism, checkpointing, EMA, logging
and throughput are applied from outside (``training/``). The frozen VAE and CLIP are held outside the
module registry (``self._frozen``), so they are never in the optimizer, in our checkpoints or in a
ZeRO-partitioned state; training needs neither (latents and CLIP features are precomputed), except the
CLIP text tower's empty-prompt tokens, computed once at setup, and the VAE for decoding validation samples.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors import SafetensorError

from animatex_train.conditioning import ConditioningConfig, batch_conditions
from animatex_train.data.loading.batch import Batch
from animatex_train.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from animatex_train.diffusion.sampling import DDIMSampler, SamplerConfig
from animatex_train.encoders.clip import CLIPConfig, FrozenCLIPImageEncoder
from animatex_train.encoders.vae import FrozenVAE, VAEConfig, decode_frames
from animatex_train.models.config import DenoiserConfig
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions
from animatex_train.training.ema import EMA, EMAConfig
from animatex_train.training.grad_norm import clip_and_measure, deepspeed_engine, deepspeed_step_norm
from animatex_train.training.init_weights import InitConfig, load_initial_weights
from animatex_train.training.keypoint_pairing import check_keypoint_pairing
from animatex_train.training.numerics import NumericsConfig, NumericsGuard, SkipStep
from animatex_train.training.optim import OptimConfig, build_optimizer, build_scheduler
from animatex_train.training.sample_videos import SampleVideoLogger, ValidationConfig

log = logging.getLogger(__name__)
TIMESTEP_BUCKETS = (0, 250, 500, 750, 1000)


@dataclass
class SystemConfig:
    """Everything ``AnimateXSystem`` is built from (the ``model:`` section of a recipe)."""

    denoiser: DenoiserConfig
    diffusion: DiffusionConfig
    sampler: SamplerConfig
    vae: VAEConfig
    clip: CLIPConfig
    optim: OptimConfig
    ema: EMAConfig
    conditioning: ConditioningConfig
    init: InitConfig
    validation: ValidationConfig
    numerics: NumericsConfig


class AnimateXSystem(pl.LightningModule):
    """Training, validation and sampling of the Animate-X denoiser.

    Args:
        denoiser: the network (``models/config.py``).
        diffusion: schedule, prediction target, offset noise.
        sampler: DDIM steps and guidance scale used for validation samples.
        vae: the frozen SD 2.1 VAE (user-supplied checkpoint, or ``tiny: true``).
        clip: the frozen OpenCLIP ViT-H-14 (user-supplied checkpoint, or ``tiny: true``).
        optim: AdamW groups and learning-rate schedule.
        ema: exponential moving average of the weights (``training/ema.py`` callback reads it).
        conditioning: how the reference enters the denoiser.
        init: initial weights (official Animate-X / UniAnimate checkpoint or our export).
        validation: sample rendering during validation.
        numerics: non-finite loss/gradient policy and loss-spike warning.
        seed: seed of every random draw of the step (timesteps, noise, condition dropout, reference mode).
        empty_prompt_cache: file caching the CLIP empty-prompt tokens (``zero_y``); computed when absent.

    Attributes:
        step_skipped: True iff the most recent optimizer step dropped its update (``training/numerics.py`` says when
            and what a skipped step means); the EMA callback reads it and does not count such steps.
        grad_norm: the global gradient norm (before clipping) of the most recent optimizer step, the same on every
            rank (``training/grad_norm.py``): a device tensor, ``inf`` when DeepSpeed found it non-finite, or None.
    """

    # Default instances (not None) so that `fit --help` lists every nested key (`--model.denoiser.ipi.*`); they are
    # shared, so __init__ works on deep copies.
    def __init__(
        self,
        denoiser: DenoiserConfig = DenoiserConfig(),  # noqa: B008
        diffusion: DiffusionConfig = DiffusionConfig(),  # noqa: B008
        sampler: SamplerConfig = SamplerConfig(),  # noqa: B008
        vae: VAEConfig = VAEConfig(),  # noqa: B008
        clip: CLIPConfig = CLIPConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        ema: EMAConfig = EMAConfig(),  # noqa: B008
        conditioning: ConditioningConfig = ConditioningConfig(),  # noqa: B008
        init: InitConfig = InitConfig(),  # noqa: B008
        validation: ValidationConfig = ValidationConfig(),  # noqa: B008
        numerics: NumericsConfig = NumericsConfig(),  # noqa: B008
        seed: int = 0,
        empty_prompt_cache: str | None = None,
    ):
        super().__init__()
        self.config = copy.deepcopy(
            SystemConfig(
                denoiser=denoiser or DenoiserConfig(),
                diffusion=diffusion or DiffusionConfig(),
                sampler=sampler or SamplerConfig(),
                vae=vae or VAEConfig(),
                clip=clip or CLIPConfig(),
                optim=optim or OptimConfig(),
                ema=ema or EMAConfig(),
                conditioning=conditioning or ConditioningConfig(),
                init=init or InitConfig(),
                validation=validation or ValidationConfig(),
                numerics=numerics or NumericsConfig(),
            )
        )
        self.config.vae.require_weights("model.vae")  # fail at start-up, not when the encoders are first built
        self.config.clip.require_weights("model.clip")
        self.seed = seed
        self.empty_prompt_cache = empty_prompt_cache
        # Plain dicts of primitives only: checkpoints stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"config": asdict(self.config), "seed": seed})
        self.denoiser = AnimateXDenoiser(self.config.denoiser)
        load_initial_weights(self.denoiser, self.config.init)
        self.diffusion = GaussianDiffusion(self.config.diffusion)
        self._frozen: dict[str, torch.nn.Module] = {}  # outside the registry: never trained or saved
        self.numerics = NumericsGuard(self.config.numerics)
        self.step_skipped = False
        self.grad_norm: torch.Tensor | float | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if stage == "fit":  # before the CLIP text tower is built: a refused run fails in seconds
            check_keypoint_pairing(self.config.denoiser, getattr(self.trainer.datamodule, "batch_size", None))
        self.denoiser.set_empty_prompt_tokens(self._empty_prompt_tokens())
        if self.config.numerics.policy == "skip" and "deepspeed" in type(self.trainer.strategy).__name__.lower():
            raise ValueError(
                "model.numerics.policy: skip is not supported under DeepSpeed (its engine cannot abandon a started "
                "step); use policy: stop, or a DDP/FSDP strategy"
            )

    def _empty_prompt_tokens(self) -> torch.Tensor:
        cache = Path(self.empty_prompt_cache) if self.empty_prompt_cache else None
        zero_y = _read_zero_y(cache) if cache is not None else None
        if zero_y is None:
            # Every rank computes the tokens itself (none waits for another); rank 0 writes the cache, atomically
            # (save_zero_y), so a rank that reads it meanwhile finds no file or the whole file.
            encoder = FrozenCLIPImageEncoder(self.config.clip)
            zero_y = encoder.empty_prompt_tokens()
            if cache is not None and self.global_rank == 0:
                encoder.save_zero_y(cache)
            del encoder
        expected = self.config.denoiser.context_dim
        if zero_y.shape[-1] != expected:
            raise ValueError(
                f"the CLIP text tower gives {zero_y.shape[-1]}-wide empty-prompt tokens but model.denoiser.context_dim "
                f"is {expected}; pick a CLIP config whose text width equals the context width (ViT-H-14: 1024)"
            )
        return zero_y

    def vae(self) -> FrozenVAE:
        """The frozen VAE, built on first use (only validation sampling and the sample command decode)."""
        if "vae" not in self._frozen:
            self._frozen["vae"] = FrozenVAE(self.config.vae).to(self.device)
        return self._frozen["vae"]

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Batch, num_samples: int | None = None, progress: bool = False) -> torch.Tensor:
        """Sample clips for the first ``num_samples`` of ``batch``: uint8 frames ``(n, f, H, W, 3)``."""
        n = num_samples or batch.batch_size
        batch = batch.head(n)
        latents, ref_latents = self._posterior(batch, "sample")
        conditions = batch_conditions(
            batch, self.config.conditioning, self.config.vae, training=False, ref_latents=ref_latents
        )
        generator = torch.Generator().manual_seed(_seed_of(self.seed, "sample", *batch.keys))
        sampler = DDIMSampler(self.diffusion, self.config.sampler)
        unconditional = DenoiserConditions()  # classifier-free guidance: every condition dropped
        # x_T is drawn from the CPU generator (the same clip on every device), then moved; the step noise
        # (eta > 0) can use the generator only where it lives.
        shape, device = tuple(latents.shape), latents.device
        noise = sampler.diffusion.sample_noise(shape, generator).to(device)
        step_generator = generator if generator.device == device else None
        latents = sampler.sample(
            lambda xt, t: self.denoiser(xt, t, conditions),
            lambda xt, t: self.denoiser(xt, t, unconditional),
            shape,
            step_generator,
            progress,
            noise=noise,
            device=device,
        )
        return decode_frames(self.vae(), latents)

    def configure_callbacks(self) -> list[pl.Callback]:
        callbacks: list[pl.Callback] = [EMA(self.config.ema)] if self.config.ema.enabled else []
        if self.config.validation.sample_clips:  # after the EMA: it swaps the EMA in
            callbacks.append(SampleVideoLogger(self.config.validation))
        return callbacks

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        step_seed = _seed_of(self.seed, "train", self.current_epoch, *batch.keys)
        generator = torch.Generator().manual_seed(step_seed)
        # Dropout layers draw from the global RNG: reseeding it per batch makes a resumed run draw exactly
        # what an uninterrupted one draws, without saving RNG states (and independently of the world size).
        torch.manual_seed(step_seed ^ 0x5EED)
        latents, ref_latents = self._posterior(batch, "train", self.current_epoch)
        conditions = batch_conditions(
            batch, self.config.conditioning, self.config.vae, True, generator, ref_latents=ref_latents
        )
        x0 = self.config.vae.to_model_latents(latents)
        t, noise = self._per_sample_noise(batch.keys, x0)
        per_sample, info = self.diffusion.training_loss(
            lambda xt, t: self.denoiser(xt, t, conditions, dropout_generator=generator), x0, t=t, noise=noise
        )
        loss = _masked_mean(per_sample, batch.valid)
        # No host sync here: the guard adds the loss to this rank's window on the device and decides once per
        # optimizer step (training/numerics.py). A non-finite loss is backpropagated as it is; its step is then
        # stopped on or dropped whole, on every rank.
        self.numerics.observe_loss(loss, batch.keys)
        self._log_step("train", loss, per_sample, info.t, batch)
        return loss

    def _per_sample_noise(self, keys: list[str], x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timestep and offset noise of each sample, drawn on ``x0``'s device from the sample's own generator.

        A sample's draws do not depend on which rank, batch or position it lands in, so a run on N ranks
        computes the same per-sample losses as one rank holding the same global batch (tested), and a
        re-sharded resume draws the same noise. The condition dropout and the reference mode stay batch-level
        draws (the official dropout couples the samples of a batch).
        """
        timesteps, noises = [], []
        for generator in self._sample_generators(keys, x0.device, "noise", self.current_epoch):
            timesteps.append(self.diffusion.sample_timesteps(1, generator, device=x0.device))
            noises.append(self.diffusion.sample_noise((1, *x0.shape[1:]), generator, device=x0.device, dtype=x0.dtype))
        return torch.cat(timesteps), torch.cat(noises)

    def _sample_generators(self, keys: list[str], device: torch.device, *context: object) -> list[torch.Generator]:
        """One generator per sample on ``device``, seeded by (seed, context, key) alone."""
        return [torch.Generator(device=device).manual_seed(_seed_of(self.seed, *context, key)) for key in keys]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip and measure the gradients once (``training/grad_norm.py``), then let the guard settle the step.

        Lightning calls this between backward and the update, so a dropped step changes nothing. Under DeepSpeed
        the engine clips and measures inside its step, and ``optimizer_step`` settles right after it.
        """
        norm = clip_and_measure(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm)
        if norm is None:
            return
        self.grad_norm = norm
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        verdict = self.numerics.settle(norm, self.global_step, self.global_rank, scaler_overflow_ok=scaler is not None)
        if verdict == "skip":
            raise SkipStep
        self.step_skipped = verdict == "overflow"  # the loss scaler drops that update itself

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """The default step; the non-finite guard settles it between backward and the update
        (``configure_gradient_clipping``), or under DeepSpeed right after the engine's step."""
        engine = deepspeed_engine(self.trainer)
        # DeepSpeed accumulates inside its engine: Lightning calls this hook for every micro-batch.
        boundary = engine is None or engine.is_gradient_accumulation_boundary()
        if boundary:
            self.step_skipped, self.grad_norm = False, None
        try:
            optimizer.step(closure=optimizer_closure)
        except SkipStep:  # raised before the optimizer changed anything
            optimizer.zero_grad(set_to_none=True)
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                scaler.update()  # the gradients were unscaled for this step: close the scaler's step
            self.step_skipped = True
        if engine is not None and boundary:
            self.grad_norm = deepspeed_step_norm(engine)
            # Raises under policy stop; the engine itself did not apply an update whose norm is not finite.
            self.numerics.settle(
                self.grad_norm, self.global_step, self.global_rank, scaler_overflow_ok=engine.fp16_enabled()
            )
            self.step_skipped = not engine.was_step_applied()
        if boundary and self.grad_norm is not None:
            self.log("train/grad_norm", self.grad_norm)  # a device tensor: no host sync until logs are written

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Lightning's default, except after a skipped step: the schedule counts applied updates (numerics.py)."""
        if not self.step_skipped:
            super().lr_scheduler_step(scheduler, metric)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(_seed_of(self.seed, "val", batch_idx, *batch.keys))
        latents, ref_latents = self._posterior(batch, "val")
        conditions = batch_conditions(
            batch, self.config.conditioning, self.config.vae, training=False, ref_latents=ref_latents
        )
        x0 = self.config.vae.to_model_latents(latents)
        per_sample, info = self.diffusion.training_loss(lambda xt, t: self.denoiser(xt, t, conditions), x0, generator)
        self._log_step("val", _masked_mean(per_sample, batch.valid), per_sample, info.t, batch)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.denoiser, self.config.optim)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        scheduler = build_scheduler(optimizer, self.config.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["numerics"] = self.numerics.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.numerics.load_state_dict(checkpoint.get("numerics", {}))

    # ------------------------------------------------------------------ helpers
    def _log_step(self, stage: str, loss: torch.Tensor, per_sample: torch.Tensor, t: torch.Tensor, batch: Batch):
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=True,
            batch_size=batch.batch_size,
        )
        self.log(
            f"{stage}/bad_samples",
            (~batch.valid).sum().float(),
            on_step=on_step,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=batch.batch_size,
        )
        if on_step:
            self.log("train/epi_applied", batch.epi_applied.float().mean(), batch_size=batch.batch_size)
            if not self.trainer._logger_connector.should_update_logs:
                return  # which buckets a batch fills is read from the device: only on steps whose logs are written
        valid = batch.valid.to(per_sample.device)
        for low, high in zip(TIMESTEP_BUCKETS[:-1], TIMESTEP_BUCKETS[1:], strict=True):
            in_bucket = (t >= low) & (t < high) & valid
            if in_bucket.any():  # this rank's value only: the buckets present differ between ranks
                self.log(
                    f"{stage}/loss_t{low:03d}-{high - 1:03d}",
                    per_sample[in_bucket].mean(),
                    on_step=on_step,
                    on_epoch=not on_step,
                    batch_size=int(in_bucket.sum()),
                    rank_zero_only=True,
                )

    def _posterior(self, batch: Batch, *context: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(latents, ref_latents)``: each sample's draw from its stored VAE posterior.

        Drawn on the batch's device (free there; in the loader it cost a CPU core 4-5 ms per sample), each
        sample from its own generator seeded by (seed, "posterior", context, key), so, like the timesteps, a
        draw does not depend on the rank, batch or position a sample lands in.
        """
        generators = self._sample_generators(batch.keys, batch.latent_mean.device, "posterior", *context)
        return batch.sample_posterior(generators)

    def render_validation_clips(self, batch: Batch, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(generated, ground truth)`` uint8 frames ``(n, f, H, W, 3)`` of the first ``num_samples`` of ``batch``
        (``training/sample_videos.py`` calls it on every rank, inside the strategy's wrapper)."""
        generated = self(batch, num_samples=num_samples)
        latents, _ = self._posterior(batch.head(num_samples), "sample")
        truth = decode_frames(self.vae(), self.config.vae.to_model_latents(latents))
        return generated, truth


def _read_zero_y(cache: Path) -> torch.Tensor | None:
    """The cached empty-prompt tokens; None if there is no cache or it cannot be read (a file cut short by a crash
    of a writer from before writes were atomic): it is then computed and written again."""
    if not cache.is_file():
        return None
    try:
        return FrozenCLIPImageEncoder.load_zero_y(cache)
    except (SafetensorError, OSError) as error:
        log.warning("model.empty_prompt_cache %s is unreadable (%s): computing the tokens again", cache, error)
        return None


def _seed_of(*parts: object) -> int:
    """A 63-bit seed from ``parts`` alone (never from process, rank order or time)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid samples; 0 (with a graph) when none is valid, so every rank still steps."""
    weights = valid.to(values)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)
