"""``--dry_run_align``: a PNG of the aligned driving skeleton over the reference image, to check before sampling."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.data.pose.render import render_pose

# The reference's own skeleton is blended half-way to light grey, so it shows on most images and the driving
# skeleton on top keeps its own colours.
_REF_SKELETON_GREY = 220.0


def preview_alignment(
    ref_image: np.ndarray,
    ref_pose: PoseSequence | None,
    aligned_frame_pose: PoseSequence,
    path: str | Path,
    unaligned_frame_pose: PoseSequence | None = None,
) -> np.ndarray:
    """Write (and return) a preview PNG of an alignment.

    Each panel is the reference image with its own skeleton in grey and a driving skeleton in the official pose
    colours on top (``data/pose/render.py``, body, feet and hands): the left panel shows ``aligned_frame_pose``
    and, when given, the right panel shows ``unaligned_frame_pose``, drawn stretched onto the reference frame as
    the ``--align none`` pipeline does. Only frame 0 of each pose is drawn.

    Args:
        ref_image: ``(H, W, 3)`` uint8 RGB reference image.
        ref_pose: the reference keypoints (None or all missing: no grey skeleton).
        aligned_frame_pose: the aligned driving pose (the align frame), normalised to the reference frame.
        path: where the PNG goes; parent folders are created.
        unaligned_frame_pose: optionally the same driving frame before alignment.

    Returns:
        ``(H, W * panels, 3)`` uint8 RGB, panels = 2 with ``unaligned_frame_pose`` else 1.

    Raises:
        ValueError: ``ref_image`` is not ``(H, W, 3)`` uint8. OSError: the PNG cannot be written.
    """
    image = np.asarray(ref_image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"ref_image must be (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
    size = (int(image.shape[0]), int(image.shape[1]))
    base = image.copy()
    if ref_pose is not None:
        skeleton = render_pose(ref_pose.select([0]), size, name="reference pose")[0]
        drawn = skeleton.any(axis=-1)
        base[drawn] = ((base[drawn].astype(np.float32) + _REF_SKELETON_GREY) / 2).astype(np.uint8)
    panels = []
    for pose, name in ((aligned_frame_pose, "aligned pose"), (unaligned_frame_pose, "unaligned pose")):
        if pose is None:
            continue
        panel = base.copy()
        skeleton = render_pose(pose.select([0]), size, name=name)[0]
        drawn = skeleton.any(axis=-1)
        panel[drawn] = skeleton[drawn]
        panels.append(panel)
    preview = np.concatenate(panels, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(preview[..., ::-1])):  # OpenCV writes BGR
        raise OSError(f"could not write the alignment preview to {path} (check the folder and the .png suffix)")
    return preview
