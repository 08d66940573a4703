"""Fitting an image into the generation canvas: ``stretch``, ``crop`` or ``pad``, for pixels and keypoints alike.

The reference and every driving frame go through the same rule, and keypoints through the same map as their
pixels, so a pose drawn from transformed keypoints lies exactly on the transformed frame. ``stretch`` is the
official PIL bilinear resize to 512x768 (no aspect preserved); ``crop`` covers the canvas and cuts the
centre; ``pad`` fits inside and fills the border with the background colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from animatex_train.data.format.keypoints import MISSING


@dataclass(frozen=True)
class FitGeometry:
    """An axis-aligned scale then a shift, from a source image to the ``(height, width)`` canvas.

    Attributes:
        mode: ``stretch``, ``crop`` or ``pad``.
        source_size: ``(height, width)`` of the source.
        canvas_size: ``(height, width)`` of the canvas.
        scaled_size: ``(height, width)`` of the resized source.
        offset: ``(y, x)`` of the resized source's top-left corner on the canvas (negative when cropped).
    """

    mode: str
    source_size: tuple[int, int]
    canvas_size: tuple[int, int]
    scaled_size: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def fit(cls, mode: str, source_size: tuple[int, int], canvas_size: tuple[int, int]) -> FitGeometry:
        (sh, sw), (ch, cw) = source_size, canvas_size
        if mode == "stretch":
            return cls(mode, (sh, sw), (ch, cw), (ch, cw), (0, 0))
        if mode not in ("crop", "pad"):
            raise ValueError(f"--ref_fit: expected stretch, crop or pad, got {mode!r}")
        scale = max(ch / sh, cw / sw) if mode == "crop" else min(ch / sh, cw / sw)
        scaled = (max(1, round(sh * scale)), max(1, round(sw * scale)))
        if mode == "crop":
            scaled = (max(scaled[0], ch), max(scaled[1], cw))
        else:
            scaled = (min(scaled[0], ch), min(scaled[1], cw))
        offset = ((ch - scaled[0]) // 2, (cw - scaled[1]) // 2)
        return cls(mode, (sh, sw), (ch, cw), scaled, offset)

    def apply(self, image: np.ndarray, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """``(sh, sw, 3)`` uint8 -> ``(ch, cw, 3)`` uint8 (PIL bilinear, as the official ``Resize``)."""
        if image.shape[:2] != self.source_size:
            raise ValueError(f"image of size {image.shape[:2]} given to a fit for {self.source_size}")
        (rh, rw), (oy, ox), (ch, cw) = self.scaled_size, self.offset, self.canvas_size
        resized = (
            image
            if (rh, rw) == self.source_size
            else np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
        )
        canvas = np.empty((ch, cw, 3), dtype=np.uint8)
        canvas[...] = np.asarray(fill, dtype=np.uint8)
        # Intersection of the resized image (at offset) with the canvas.
        y0, x0 = max(0, oy), max(0, ox)
        y1, x1 = min(ch, oy + rh), min(cw, ox + rw)
        canvas[y0:y1, x0:x1] = resized[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        return canvas

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Keypoints normalised to the source -> normalised to the canvas; points cut off become missing.

        Args:
            points: ``(..., 2)`` ``(x / sw, y / sh)``, missing ``(-1, -1)``.

        Returns:
            ``(..., 2)`` float32.
        """
        points = np.asarray(points, dtype=np.float64)
        present = ~np.all(points == MISSING, axis=-1)
        (rh, rw), (oy, ox), (ch, cw) = self.scaled_size, self.offset, self.canvas_size
        x = (points[..., 0] * rw + ox) / cw
        y = (points[..., 1] * rh + oy) / ch
        inside = present & (x >= 0.0) & (x <= 1.0) & (y >= 0.0) & (y <= 1.0)
        return np.stack([np.where(inside, x, MISSING), np.where(inside, y, MISSING)], axis=-1).astype(np.float32)


def default_canvas(reference_size: tuple[int, int]) -> tuple[int, int]:
    """768x512 (height x width), or 512x768 for a landscape reference."""
    height, width = reference_size
    return (512, 768) if width > height else (768, 512)
