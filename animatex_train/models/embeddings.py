"""Fixed (non-learned) embeddings: the timestep sinusoid and the keypoint encoder's position table."""

from __future__ import annotations

import torch


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of raw integer timesteps, ``[cos, sin]`` order (VGen/UniAnimate convention).

    Computed in float32 from the integer timesteps, frequencies ``10000^(-i/half)``, exactly as the
    official denoiser (docs/official_release.md §1.2), so released weights see the inputs they were trained on.

    Args:
        timesteps: ``(b,)`` integer (or float) timesteps in ``[0, 999]``.
        dim: embedding width.

    Returns:
        ``(b, dim)`` float32.
    """
    half = dim // 2
    timesteps = timesteps.float()
    frequencies = torch.pow(10000, -torch.arange(half, device=timesteps.device).to(timesteps).div(half))
    angles = torch.outer(timesteps, frequencies)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=1)
    return embedding


def sinusoid_position_table(length: int, dim: int) -> torch.Tensor:
    """The classic transformer position table, ``sin`` on even and ``cos`` on odd channels.

    Built in float64 then cast, like the official numpy construction, so a loaded checkpoint's
    ``pos_table`` buffer equals the recomputed one.

    Returns:
        ``(1, length, dim)`` float32.
    """
    position = torch.arange(length, dtype=torch.float64)[:, None]
    channel = torch.arange(dim, dtype=torch.float64)[None, :]
    exponent = 2 * torch.div(channel, 2, rounding_mode="floor") / dim
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


def check_position_capacity(num_positions: int, capacity: int) -> None:
    """Raise a clear error when a clip is longer than the keypoint encoder's position table."""
    if num_positions > capacity:
        raise ValueError(
            f"the implicit pose indicator's position table has {capacity} rows (model.denoiser.ipi.max_frames) but "
            f"the clip has {num_positions} frames (frames + 1 reference); set model.denoiser.ipi.max_frames >= "
            f"{num_positions} (the official code calls it seq_len = frames + 1)"
        )
