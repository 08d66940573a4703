"""Long-video sampling in overlapping frame windows: the schedule, per-window conditions, fusion, noise prior.

Animate-X itself only samples a clip in one pass (docs/inference.md). For longer clips we follow
UniAnimate's long-video mode (section 2): the denoiser runs on fixed windows of ``window`` frames that overlap by
``overlap`` frames, every condition is sliced to the window, and the per-window predictions are averaged per
frame at every sampling step. MimicMotion's triangular weights (section 4) are offered as an alternative to the
uniform mean, and MusePose's "pad the tail with the last frame" as an alternative to UniAnimate's snapped tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Literal

import torch

from animatex_train.models.unet import DenoiserConditions

WindowTail = Literal["snap", "pad"]
FusionKind = Literal["uniform", "triangular"]
NoisePriorVariant = Literal["long", "short"]
DenoiserFn = Callable[[torch.Tensor, torch.Tensor, DenoiserConditions | None], torch.Tensor]

# Conditions with the reference at frame 0 and driving frames 1..N along this dim (DenoiserConditions docs).
_REF_FIRST_DIM = {"pose_images": 2, "pose_keypoints": 1, "driving_clip": 1}


def window_schedule(num_frames: int, window: int, overlap: int, tail: WindowTail = "snap") -> list[list[int]]:
    """The frame windows of a long clip, fixed for the whole sampling run.

    Rule (UniAnimate ``context_scheduler`` with ``context_stride`` 1 and step 0, then ``p_mean_variance``):

    * ``num_frames <= window``: exactly one window ``[0, num_frames)``, whatever ``tail``. UniAnimate instead
      pads that window to ``window`` frames with wrapped duplicates (N = 20 gives 0..19, 0..11), whose
      duplicate writes keep only the last one; we run the short clip in one pass.
    * ``tail="snap"`` (UniAnimate): windows start at ``j = 0, S - O, 2 (S - O), ...`` while ``j < N - O`` and
      hold frames ``j .. j + S - 1``; the last window is then replaced by ``N - S .. N - 1``. Only the last
      window can run past the end, so nothing wraps. E.g. N = 96, S = 32, O = 8 gives [0, 32) [24, 56) [48, 80)
      [64, 96); N = 33, O = 4 gives [0, 32) [1, 33) (twice the cost for one extra frame).
    * ``tail="pad"`` (MusePose ``test_stage_2``, which pads the pose list with copies of the last pose so the
      windows tile exactly): the same starts, continued until a window reaches frame ``N - 1``; indices past the
      end are clamped to ``N - 1``, i.e. the last frame is held. Duplicate indices are fused like any other
      (``WindowedDenoiser`` accumulates them), so the held copies all vote for frame ``N - 1``.

    Args:
        num_frames: N, the number of generated frames (>= 1).
        window: S, frames per window (>= 1; ``--window``).
        overlap: O, frames shared by consecutive windows, ``0 <= O < S`` (``--overlap``).
        tail: ``"snap"`` or ``"pad"``, see above.

    Returns:
        The windows in order, each a list of ``min(S, N)`` frame indices in ``[0, N)``; every frame is covered.

    Raises:
        ValueError: an argument out of range; the message names the flag and the fix.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}: the driving clip has no frames (check --frames)")
    if window < 1:
        raise ValueError(f"--window must be >= 1 frame, got {window}; the official clip length is 32")
    if not 0 <= overlap < window:
        raise ValueError(
            f"--overlap must satisfy 0 <= overlap < --window ({window}), got {overlap}; UniAnimate uses --overlap 8 "
            "with --window 32"
        )
    if tail not in ("snap", "pad"):
        raise ValueError(f"tail must be 'snap' (UniAnimate) or 'pad' (MusePose), got {tail!r}")
    if num_frames <= window:
        return [list(range(num_frames))]
    step = window - overlap
    if tail == "snap":
        starts = list(range(0, num_frames - overlap, step))
        windows = [list(range(j, j + window)) for j in starts]
        windows[-1] = list(range(num_frames - window, num_frames))
        return windows
    windows = []
    start = 0
    while True:
        windows.append([min(j, num_frames - 1) for j in range(start, start + window)])
        if start + window >= num_frames:
            return windows
        start += step


def fusion_weights(kind: FusionKind, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-position weights ``(length,)`` of a window's predictions in the per-frame weighted average.

    ``"uniform"`` is UniAnimate's plain mean (all ones). ``"triangular"`` is MimicMotion's progressive latent
    fusion (``pipeline_mimicmotion.py``): ``w_k = min((k + 1/2) 2 / S, 2 - (k + 1/2) 2 / S)`` with ``S = length``,
    rising from ``1/S`` at the window's edges to about 1 in its middle, so frames near a seam lean on the window
    that sees them in its centre.

    Raises:
        ValueError: an unknown kind (names ``--fusion``) or ``length < 1``.
    """
    if kind not in ("uniform", "triangular"):
        raise ValueError(f"--fusion must be 'uniform' (UniAnimate) or 'triangular' (MimicMotion), got {kind!r}")
    if length < 1:
        raise ValueError(f"a window must hold at least one frame, got length {length}")
    if kind == "uniform":
        return torch.ones(length, dtype=dtype)
    position = (torch.arange(length, dtype=torch.float64) + 0.5) * 2.0 / length
    return torch.minimum(position, 2.0 - position).to(dtype)


def slice_conditions(conditions: DenoiserConditions, frames: Sequence[int]) -> DenoiserConditions:
    """The conditions of one window: every per-frame condition restricted to ``frames``.

    As UniAnimate's long mode slices its kwargs, extended to all Animate-X inputs (docs/inference.md):

    * ``local_image`` ``(b, 3, f, H, W)`` is sliced along f; with one frame ``(b, 3, 1, H, W)`` it is kept.
    * ``pose_images`` ``(b, 3, f + 1, H, W)``, ``pose_keypoints`` ``(b, f + 1, 2, 18)`` and ``driving_clip``
      ``(b, f + 1, clip_dim)`` take frames ``[0] + [i + 1 for i in frames]``: frame 0 is the reference's (pose,
      keypoints, CLIP) and stays in every window, as UniAnimate keeps ``dwpose[:, :, [0]]``. (The dead
      ``DiffusionDDIMLong`` copied into Animate-X slices a ``pose_embedding`` key the UNet never reads, so its
      IPI would see zeros.)
    * ``image_embedding``, ``ref_latent`` and the keep masks have no frame axis and are passed unchanged; None
      stays None.

    Raises:
        ValueError: ``frames`` is empty or reaches past a condition's frames.
    """
    if len(frames) == 0:
        raise ValueError("a window must hold at least one frame")
    values = {field.name: getattr(conditions, field.name) for field in fields(conditions)}
    local = values["local_image"]
    if local is not None and local.shape[2] != 1:
        values["local_image"] = _take(local, 2, list(frames), "local_image")
    with_ref = [0] + [i + 1 for i in frames]
    for name, dim in _REF_FIRST_DIM.items():
        if values[name] is not None:
            values[name] = _take(values[name], dim, with_ref, name)
    return DenoiserConditions(**values)


def _take(tensor: torch.Tensor, dim: int, index: list[int], name: str) -> torch.Tensor:
    if min(index) < 0 or max(index) >= tensor.shape[dim]:
        raise ValueError(
            f"conditions.{name} has {tensor.shape[dim]} frames along dim {dim} (shape {tuple(tensor.shape)}), but the "
            f"window needs index {max(index)}; every per-frame condition must cover all frames of the clip"
        )
    return tensor.index_select(dim, torch.tensor(index, dtype=torch.long, device=tensor.device))


def _concat_conditions(parts: list[DenoiserConditions | None]) -> DenoiserConditions | None:
    """Stack the conditions of several windows along the batch dim (all None -> None)."""
    if len(parts) == 1 or parts[0] is None:
        return parts[0]
    values = {}
    for field in fields(DenoiserConditions):
        tensors = [getattr(part, field.name) for part in parts]
        values[field.name] = None if tensors[0] is None else torch.cat(tensors, dim=0)
    return DenoiserConditions(**values)


class WindowedDenoiser:
    """A denoiser over ``N`` frames built from a denoiser over windows, fusing overlaps by a weighted mean.

    Call it like the denoiser: ``(x (b, c, N, h, w), t (b,), conditions | None) -> (b, c, N, h, w)``. Each
    window ``idx`` runs ``denoiser_fn(x[:, :, idx], t, slice_conditions(conditions, idx))`` (None conditions stay
    None: the unconditional branch), and frame ``f`` of the result is ``sum w_k v_k / sum w_k`` over every window
    position ``k`` holding ``f`` (UniAnimate: cond and uncond outputs are fused separately, then guided; call
    this once per branch). Duplicate indices inside one window (``tail="pad"``) each add their own term.

    A schedule of one window ``[0, N)`` calls ``denoiser_fn`` once on the unsliced inputs and returns its output
    as is, so a short clip is bitwise the single pass.

    Args:
        denoiser_fn: the model (or any callable with the same signature).
        schedule: windows from ``window_schedule``; every frame of the clip must be covered.
        fusion: ``"uniform"`` or ``"triangular"`` (``fusion_weights``; ``--fusion``).
        window_batch: run this many windows as one batch (UniAnimate ``context_batch_size``): their latents,
            timesteps and conditions are concatenated along b. With k > 1 every window must have the same
            length, and the denoiser must keep batch samples independent: an Animate-X model with the official
            IPI keypoint row order mixes samples (docs/inference.md), use ``keypoint_row_order=per_sample``.
    """

    def __init__(
        self, denoiser_fn: DenoiserFn, schedule: list[list[int]], fusion: FusionKind = "uniform", window_batch: int = 1
    ) -> None:
        if not schedule or any(len(w) == 0 for w in schedule):
            raise ValueError("the window schedule must hold at least one non-empty window (see window_schedule)")
        if window_batch < 1:
            raise ValueError(f"--window_batch must be >= 1, got {window_batch}")
        if window_batch > 1 and len({len(w) for w in schedule}) > 1:
            raise ValueError(
                f"--window_batch {window_batch} needs windows of equal length, got lengths "
                f"{sorted({len(w) for w in schedule})}; use --window_batch 1"
            )
        self.denoiser_fn = denoiser_fn
        self.schedule = [list(map(int, w)) for w in schedule]
        self.fusion = fusion
        self.window_batch = window_batch
        self.num_frames = max(max(w) for w in self.schedule) + 1
        covered = set().union(*map(set, self.schedule))
        if min(min(w) for w in self.schedule) < 0 or len(covered) != self.num_frames:
            missing = sorted(set(range(self.num_frames)) - covered)
            raise ValueError(f"the window schedule leaves frames {missing[:8]} uncovered; use window_schedule")
        self.weights = [fusion_weights(fusion, len(w), dtype=torch.float64) for w in self.schedule]
        self.weight_sum = torch.zeros(self.num_frames, dtype=torch.float64)  # (N,) the fusion's denominators
        for window, weights in zip(self.schedule, self.weights, strict=True):
            for k, frame in enumerate(window):
                self.weight_sum[frame] += weights[k]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conditions: DenoiserConditions | None = None) -> torch.Tensor:
        """Fused prediction ``(b, c, N, h, w)`` for latents ``x`` ``(b, c, N, h, w)`` at timesteps ``t`` ``(b,)``."""
        if x.dim() != 5 or x.shape[2] != self.num_frames:
            raise ValueError(
                f"latents must be (b, c, N={self.num_frames}, h, w) to match the window schedule, got "
                f"{tuple(x.shape)}; rebuild the schedule for this clip length"
            )
        if len(self.schedule) == 1 and self.schedule[0] == list(range(self.num_frames)):
            return self.denoiser_fn(x, t, conditions)
        b = x.shape[0]
        total: torch.Tensor | None = None
        out_dtype = x.dtype
        for first in range(0, len(self.schedule), self.window_batch):
            group = list(range(first, min(first + self.window_batch, len(self.schedule))))
            latents = torch.cat([self._frames(x, self.schedule[i]) for i in group], dim=0)
            conds = [None if conditions is None else slice_conditions(conditions, self.schedule[i]) for i in group]
            out = self.denoiser_fn(latents, t.repeat(len(group)), _concat_conditions(conds))
            out_dtype = out.dtype
            if total is None:  # accumulate in at least float32, whatever the model's dtype
                dtype = torch.promote_types(out.dtype, torch.float32)
                total = torch.zeros(b, out.shape[1], self.num_frames, *out.shape[3:], dtype=dtype, device=out.device)
            for slot, i in enumerate(group):
                self._accumulate(total, out[slot * b : (slot + 1) * b], self.schedule[i], self.weights[i])
        assert total is not None  # the schedule is non-empty
        norm = self.weight_sum.to(total.device, total.dtype).view(1, 1, -1, *([1] * (total.dim() - 3)))
        return (total / norm).to(out_dtype)

    @staticmethod
    def _frames(x: torch.Tensor, window: list[int]) -> torch.Tensor:
        return x.index_select(2, torch.tensor(window, dtype=torch.long, device=x.device))

    @staticmethod
    def _accumulate(total: torch.Tensor, out: torch.Tensor, window: list[int], weights: torch.Tensor) -> None:
        """``total[:, :, window[k]] += weights[k] * out[:, :, k]`` for every k, in a fixed order.

        Not ``index_add_``: on CUDA it adds with atomics, so repeated indices would sum in a varying order and the
        sampler would no longer be bitwise reproducible. Unique indices take one indexed add (UniAnimate's
        ``noise_pred[:, :, c] += ...``, where duplicates keep only the last write).
        """
        w = weights.to(out.device, total.dtype).view(1, 1, -1, *([1] * (out.dim() - 3)))
        weighted = out.to(total.dtype) * w
        if len(set(window)) == len(window):
            total[:, :, window] += weighted
            return
        for k, frame in enumerate(window):
            total[:, :, frame] += weighted[:, :, k]


def noise_prior(
    x_T: torch.Tensor,
    ref_latent: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    tau: int,
    offset_noise: torch.Tensor | None = None,
    offset_noise_strength: float = 0.1,
    variant: NoisePriorVariant = "long",
) -> torch.Tensor:
    """UniAnimate's noise prior: start sampling from the reference latent noised to step ``tau``, not pure noise.

    With the reference latent repeated over the N frames (UniAnimate long entrance, tau = 939):

    * ``"long"``:  ``x_init = sqrt(a_tau) z_ref + sqrt(1 - a_tau) eps + s eps_off``
    * ``"short"``: ``x_init = sqrt(a_tau) z_ref + sqrt(1 - a_tau) (eps + s eps_off)`` (short entrance, tau = 949)

    where ``a = alphas_cumprod``, ``eps = x_T`` and ``s = offset_noise_strength``. The first sampled step assumes
    t = 991 (sqrt(a) = 0.0036 with the zero-terminal-SNR schedule), so sqrt(a_939) = 0.030 deliberately leaks
    about 8x more of the reference into x_T; it keeps the appearance (background) in long videos, and too much
    ghosts the reference (raise tau to 949/959/969, UniAnimate#63).

    Args:
        x_T: ``(b, c, N, h, w)`` standard Gaussian noise ``eps`` (without the offset term).
        ref_latent: ``(b, c, 1, h, w)`` (repeated over N) or ``(b, c, N, h, w)`` scaled VAE latent of the reference.
        alphas_cumprod: ``(T,)`` the training schedule's cumulative alphas.
        tau: the prior's timestep, ``0 <= tau < T`` (``--noise_prior``).
        offset_noise: optional ``(b, c, N, 1, 1)`` (or broadcastable) unit offset noise ``eps_off``.
        offset_noise_strength: ``s``, the official ``noise_strength`` (0.1).
        variant: ``"long"`` or ``"short"``, see above.

    Returns:
        ``(b, c, N, h, w)`` in ``x_T``'s dtype.
    """
    if not 0 <= tau < alphas_cumprod.shape[0]:
        raise ValueError(
            f"--noise_prior must be a timestep in [0, {alphas_cumprod.shape[0] - 1}], got {tau}; UniAnimate uses 939"
        )
    if variant not in ("long", "short"):
        raise ValueError(f"noise prior variant must be 'long' or 'short', got {variant!r}")
    if ref_latent.dim() != 5 or ref_latent.shape[2] not in (1, x_T.shape[2]) or ref_latent.shape[:2] != x_T.shape[:2]:
        raise ValueError(
            f"ref_latent must be (b, c, 1 or N, h, w) matching x_T {tuple(x_T.shape)}, got {tuple(ref_latent.shape)}"
        )
    alpha = alphas_cumprod[tau].to(torch.float64)
    signal, sigma = alpha.sqrt().item(), (1.0 - alpha).sqrt().item()
    offset = 0.0 if offset_noise is None else offset_noise_strength * offset_noise.to(x_T.dtype)
    if variant == "long":
        return signal * ref_latent.to(x_T.dtype) + sigma * x_T + offset
    return signal * ref_latent.to(x_T.dtype) + sigma * (x_T + offset)
