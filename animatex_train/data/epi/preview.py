"""A picture of what EPI does: a PNG grid of original | realigned | rescaled pose images for a few samples.

Also provides ``demo_pose_sequence``, a moving full-body pose with hands and face built by forward kinematics,
so the preview (``--demo``), the renderer benchmark and the tests have realistic poses without any shards.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from animatex_train.data.epi.anchor_pool import AnchorPool
from animatex_train.data.epi.transform import EPIConfig, run_epi_plan, sample_epi_plan
from animatex_train.data.format.keypoints import BODY, MISSING, NUM_FACE, PoseSequence
from animatex_train.data.pose.render import render_pose
from animatex_train.data.pose.skeleton import ANCESTORS, HAND_WRIST, JOINT_PARENT, NUM_JOINTS, TOPOLOGICAL_ORDER

STAGES = ("original", "realigned", "rescaled")
HEADER_PX = 24

# Rest pose of the demo body: (bone length in units of frame height, direction in degrees; 0 = +x, 90 = down).
# The person faces the camera, so their right side is on the image's left.
_REST: dict[int, tuple[float, float]] = {
    BODY["nose"]: (0.075, -90.0),
    BODY["right_eye"]: (0.025, -145.0),
    BODY["left_eye"]: (0.025, -35.0),
    BODY["right_ear"]: (0.03, 170.0),
    BODY["left_ear"]: (0.03, 10.0),
    BODY["right_shoulder"]: (0.085, 180.0),
    BODY["left_shoulder"]: (0.085, 0.0),
    BODY["right_elbow"]: (0.13, 105.0),
    BODY["right_wrist"]: (0.12, 95.0),
    BODY["left_elbow"]: (0.13, 75.0),
    BODY["left_wrist"]: (0.12, 85.0),
    BODY["right_hip"]: (0.27, 100.0),
    BODY["left_hip"]: (0.27, 80.0),
    BODY["right_knee"]: (0.17, 92.0),
    BODY["right_ankle"]: (0.17, 90.0),
    BODY["left_knee"]: (0.17, 88.0),
    BODY["left_ankle"]: (0.17, 90.0),
    NUM_JOINTS - 2: (0.04, 60.0),
    NUM_JOINTS - 1: (0.04, 120.0),  # toes: left foot, right foot
}
# Joints whose bone swings over time, with the swing amplitude in degrees (arms wave, legs step).
_SWING = {
    BODY["right_elbow"]: 35.0,
    BODY["right_wrist"]: 45.0,
    BODY["left_elbow"]: 35.0,
    BODY["left_wrist"]: 45.0,
    BODY["right_knee"]: 12.0,
    BODY["right_ankle"]: 15.0,
    BODY["left_knee"]: 12.0,
    BODY["left_ankle"]: 15.0,
    BODY["nose"]: 8.0,
}


def demo_pose_sequence(
    num_frames: int,
    frame_size: tuple[int, int] = (768, 512),
    seed: int = 0,
    shape_jitter: float = 0.15,
    body_scale: float = 1.0,
    with_face: bool = True,
) -> PoseSequence:
    """A dancing full-body pose: rigid 2-D bones (constant lengths) swinging over time, hands and face attached.

    Args:
        num_frames: frames to make.
        frame_size: ``(height, width)``.
        seed: picks the body proportions (within ``shape_jitter``) and the motion's phases and speeds.
        shape_jitter: relative spread of each bone length around the rest proportions.
        body_scale: overall size multiplier.
        with_face: add the 68 face points.

    Returns:
        The poses; points that fall outside the frame are missing.
    """
    rng = np.random.default_rng(seed)
    height, width = frame_size
    lengths = np.zeros(NUM_JOINTS)
    rest_angle = np.zeros(NUM_JOINTS)
    for joint, (length, angle) in _REST.items():
        lengths[joint] = length * height * body_scale * (1.0 + rng.uniform(-shape_jitter, shape_jitter))
        rest_angle[joint] = angle
    phase = rng.uniform(0, 2 * np.pi, NUM_JOINTS)
    speed = rng.uniform(0.05, 0.2, NUM_JOINTS)
    frames = np.arange(num_frames)[:, None]
    swing = np.array([_SWING.get(j, 0.0) for j in range(NUM_JOINTS)])
    # Relative angles: a child's swing adds to its parent's, like joint rotations.
    local = np.deg2rad(swing * np.sin(speed * frames + phase))  # (t, 20)
    joints = np.zeros((num_frames, NUM_JOINTS, 2))
    joints[:, BODY["neck"], 0] = width * (0.5 + 0.08 * np.sin(0.07 * frames[:, 0] + phase[0]))
    joints[:, BODY["neck"], 1] = height * (0.24 + 0.02 * np.sin(0.13 * frames[:, 0] + phase[1]))
    for joint in TOPOLOGICAL_ORDER[1:]:
        angle = np.deg2rad(rest_angle[joint]) + local[:, joint] + sum(local[:, a] for a in ANCESTORS[joint][:-1])
        direction = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        joints[:, joint] = joints[:, JOINT_PARENT[joint]] + lengths[joint] * direction

    hands = np.zeros((num_frames, 2, 21, 2))
    for hand, wrist in enumerate(HAND_WRIST):
        elbow = JOINT_PARENT[wrist]
        forearm = joints[:, wrist] - joints[:, elbow]
        base = np.arctan2(forearm[:, 1], forearm[:, 0])
        hands[:, hand, 0] = joints[:, wrist]
        segment = 0.022 * height * body_scale
        for finger in range(5):
            spread = np.deg2rad(-40.0 + 20.0 * finger) + 0.2 * np.sin(0.3 * frames[:, 0] + finger)
            point = joints[:, wrist].copy()
            for k in range(4):
                curl = base + spread + 0.15 * k * np.sin(0.2 * frames[:, 0] + phase[finger])
                point = point + segment * (1.0 if k else 1.6) * np.stack([np.cos(curl), np.sin(curl)], axis=-1)
                hands[:, hand, 1 + 4 * finger + k] = point

    face = None
    if with_face:
        nose = joints[:, BODY["nose"]]
        around = np.linspace(0, 2 * np.pi, NUM_FACE, endpoint=False)
        radius = np.array([0.05 * height * body_scale, 0.065 * height * body_scale])
        face = nose[:, None, :] + radius * np.stack([np.cos(around), np.sin(around)], axis=-1)[None]

    scale = np.array([width, height], dtype=np.float64)

    def normalise(points: np.ndarray) -> np.ndarray:
        out = (points / scale).astype(np.float32)
        out[~np.all((out >= 0) & (out <= 1), axis=-1)] = MISSING
        return out

    body_feet = normalise(joints)
    return PoseSequence(
        body=np.ascontiguousarray(body_feet[:, :18]),
        feet=np.ascontiguousarray(body_feet[:, 18:]),
        hands=normalise(hands),
        face=None if face is None else normalise(face),
        frame_size=(int(height), int(width)),
    )


def demo_anchor_pool(num_anchors: int = 8) -> AnchorPool:
    """Anchors of varied body shapes from ``demo_pose_sequence``: a pool for previews without shards."""
    demo = [demo_pose_sequence(1, seed=s, shape_jitter=0.4) for s in range(num_anchors)]
    return AnchorPool(
        np.concatenate([d.to_array() for d in demo]),
        [d.frame_size for d in demo],
        tuple(f"demo {s}" for s in range(num_anchors)),
    )


def render_preview_grid(
    poses: list[PoseSequence],
    anchors: AnchorPool,
    config: EPIConfig,
    seed: int,
    frames_per_sample: int = 3,
    size: tuple[int, int] = (384, 256),
    epoch: int = 0,
) -> np.ndarray:
    """Draw each sample's poses before EPI, after realignment, and after rescaling.

    Rows are samples; columns are ``frames_per_sample`` evenly spaced frames of each stage, stage by stage. The
    transform is forced on (lambda > 0 counts as 1) so every row shows what EPI does; the sample key is ``preview-<i>``.

    Args:
        poses: one clip per row.
        anchors: the pose pool.
        config: EPI settings (which ops are enabled, ranges).
        seed: EPI seed.
        frames_per_sample: frames shown per stage.
        size: ``(height, width)`` of one tile.
        epoch: EPI epoch.

    Returns:
        ``(24 + rows * height, 3 * frames_per_sample * width, 3)`` uint8 RGB.
    """
    if not poses:
        raise ValueError("render_preview_grid needs at least one pose sequence")
    # A config that never applies EPI (lambda = 0) previews as the identity; any other shows the transform.
    forced = dataclasses.replace(config, apply_prob=1.0) if 0.0 < config.apply_prob < 1.0 else config
    tile_h, tile_w = size
    columns = len(STAGES) * frames_per_sample
    grid = np.zeros((HEADER_PX + len(poses) * tile_h, columns * tile_w, 3), dtype=np.uint8)
    for stage_index, stage in enumerate(STAGES):
        x = stage_index * frames_per_sample * tile_w + 4
        cv2.putText(grid, stage, (x, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    for row, pose in enumerate(poses):
        key = f"preview-{row}"
        plan = sample_epi_plan(forced, len(anchors), seed, epoch, key)
        realigned, rescaled = run_epi_plan(pose, plan, anchors, forced, f"preview sample {row}")
        frames = np.unique(np.linspace(0, pose.num_frames - 1, frames_per_sample).round().astype(np.int64))
        top = HEADER_PX + row * tile_h
        for stage_index, stage_pose in enumerate((pose, realigned, rescaled)):
            tiles = render_pose(stage_pose.select(frames), size)
            for k, tile in enumerate(tiles):
                left = (stage_index * frames_per_sample + k) * tile_w
                grid[top : top + tile_h, left : left + tile_w] = tile
        ops = ",".join(plan.rescale.ops) if plan.rescale is not None else "-"
        label = f"anchor {plan.anchor_index}  ops {ops}"
        cv2.putText(grid, label, (4, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 200, 200), 1, cv2.LINE_AA)
    # Thin separators between stages.
    for stage_index in range(1, len(STAGES)):
        grid[:, stage_index * frames_per_sample * tile_w] = 96
    return grid


__all__ = ["demo_anchor_pool", "demo_pose_sequence", "render_preview_grid"]
