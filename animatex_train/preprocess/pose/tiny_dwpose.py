"""Tiny stand-ins for the two DWPose ONNX files, for tests, benchmarks and the demo (no weights to download).

They have the released files' input/output names, shapes and dtypes, and produce fixed outputs that the
real post-processing turns into one standing person: the detector reports a person box (plus a weaker
second person and a high-scoring non-person box that must both be ignored), and the pose model reports a
whole-body skeleton with a few points below the 0.3 score threshold. The input is consumed (times zero),
so the graph really runs on the frames it is given. Needs the ``onnx`` package (the ``dev`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

DET_INPUT = (640, 640)
POSE_INPUT = (384, 288)  # (height, width) of dw-ll_ucoco_384
NUM_ANCHORS = 8400  # 80^2 + 40^2 + 20^2 for strides 8, 16, 32
NUM_WHOLEBODY = 133
OPSET = 17

# Detector anchors (stride-32 level, offset 80*80 + 40*40): (grid x, grid y, dx, dy, box w, box h, obj, class probs)
_ANCHORS = (
    (6, 10, 0.25, 0.0, 160.0, 480.0, 0.95, {0: 0.95}),  # the person: letterbox box centred at (200, 320)
    (9, 8, 0.0, 0.0, 100.0, 300.0, 0.8, {0: 0.7}),  # a weaker person (score 0.56): never the first
    (3, 3, 0.0, 0.0, 64.0, 64.0, 0.99, {0: 0.05, 1: 0.99}),  # a confident non-person
)
# COCO-17 body + 6 feet in pose-input pixels (x, y) and scores; the subject faces the camera.
_BODY = (
    (144, 60, 0.9),
    (152, 52, 0.9),
    (136, 52, 0.9),
    (162, 58, 0.9),
    (126, 58, 0.2),  # nose, eyes, ears (r ear low)
    (180, 100, 0.9),
    (108, 100, 0.9),
    (196, 150, 0.9),
    (92, 150, 0.9),
    (204, 196, 0.8),
    (84, 196, 0.8),
    (166, 200, 0.9),
    (122, 200, 0.9),
    (170, 270, 0.9),
    (118, 270, 0.9),
    (172, 335, 0.9),
    (116, 335, 0.9),
    (182, 350, 0.9),
    (176, 352, 0.25),
    (168, 345, 0.9),  # left big toe, small toe (low), heel
    (106, 350, 0.9),
    (112, 352, 0.9),
    (120, 345, 0.9),  # right big toe, small toe, heel
)


def tiny_pose_keypoints() -> tuple[np.ndarray, np.ndarray]:
    """The pose model's fixed output as COCO-WholeBody keypoints in pose-input pixels, and their scores.

    Returns:
        ``(133, 2)`` float64 (x, y) in the ``288 x 384`` input (multiples of 0.5, SimCC's resolution) and
        ``(133,)`` scores.
    """
    points = np.zeros((NUM_WHOLEBODY, 2))
    scores = np.zeros(NUM_WHOLEBODY)
    points[:23] = [(x, y) for x, y, _ in _BODY]
    scores[:23] = [s for _, _, s in _BODY]
    angles = np.linspace(0.0, 2.0 * np.pi, 68, endpoint=False)
    points[23:91] = np.stack([144 + 14 * np.cos(angles), 62 + 18 * np.sin(angles)], axis=-1)
    scores[23:91] = np.where(np.arange(68) % 10 == 0, 0.1, 0.7)  # every 10th face point is below threshold
    for hand, (wx, wy) in ((91, (204.0, 196.0)), (112, (84.0, 196.0))):
        offsets = np.array([[0.0, 0.0]] + [[(f - 2) * 4.0, 4.0 + 3.0 * j] for f in range(5) for j in range(4)])
        points[hand : hand + 21] = np.array([wx, wy]) + offsets
        scores[hand : hand + 21] = 0.6
    return np.round(points * 2) / 2, scores


def _blank_gate(input_name: str, input_shape: list) -> tuple[list, list]:
    """Nodes computing ``gate`` (batch, 1, 1): 1 when the centre half of the input varies, 0 when it is flat.

    A flat centre is what a crop of an empty (one-colour) image gives, where the real pose model finds nobody.
    """
    from onnx import TensorProto, helper, numpy_helper

    h, w = input_shape[2], input_shape[3]
    nodes = [
        helper.make_node("Slice", [input_name, "gate_starts", "gate_ends", "gate_axes"], ["centre"]),
        helper.make_node("ReduceMean", ["centre"], ["centre_mean"], axes=[2, 3], keepdims=1),
        helper.make_node("Sub", ["centre", "centre_mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[1, 2, 3], keepdims=1),  # (batch, 1, 1, 1)
        helper.make_node("Greater", ["variance", "gate_eps"], ["varies"]),
        helper.make_node("Cast", ["varies"], ["gate_4d"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["gate_4d"], ["gate_flat"], axis=1),  # (batch, 1)
        helper.make_node("Unsqueeze", ["gate_flat", "axis2"], ["gate"]),  # (batch, 1, 1)
    ]
    initializers = [
        numpy_helper.from_array(np.array([h // 4, w // 4], dtype=np.int64), "gate_starts"),
        numpy_helper.from_array(np.array([3 * h // 4, 3 * w // 4], dtype=np.int64), "gate_ends"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "gate_axes"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "gate_eps"),
    ]
    return nodes, initializers


def _constant_graph(
    input_name: str, input_shape: list, outputs: dict[str, np.ndarray], blank_means_nobody: bool = False
) -> onnx.ModelProto:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["mean_flat"], axis=1),  # (batch, 1)
        helper.make_node("Unsqueeze", ["mean_flat", "axis2"], ["mean_3d"]),  # (batch, 1, 1)
        helper.make_node("Mul", ["mean_3d", "zero"], ["nothing"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    if blank_means_nobody:
        gate_nodes, gate_initializers = _blank_gate(input_name, input_shape)
        nodes += gate_nodes
        initializers += gate_initializers
    graph_outputs = []
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(value.astype(np.float32)[None], f"{name}_const"))
        if blank_means_nobody:  # scores (and so every point) vanish on a flat crop
            nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [f"{name}_ungated"]))
            nodes.append(helper.make_node("Mul", [f"{name}_ungated", "gate"], [name]))
        else:
            nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [input_shape[0], *value.shape]))
    graph = helper.make_graph(
        nodes,
        "tiny_dwpose",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        graph_outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.12
    onnx.checker.check_model(model)
    return model


def detector_output() -> np.ndarray:
    """The detector's fixed ``(8400, 85)`` output."""
    raw = np.zeros((NUM_ANCHORS, 85), dtype=np.float32)
    offset = 80 * 80 + 40 * 40
    for gx, gy, dx, dy, w, h, obj, classes in _ANCHORS:
        row = raw[offset + gy * 20 + gx]
        row[:4] = [dx, dy, np.log(w / 32.0), np.log(h / 32.0)]
        row[4] = obj
        for cls, prob in classes.items():
            row[5 + cls] = prob
    return raw


def pose_outputs() -> tuple[np.ndarray, np.ndarray]:
    """The pose model's fixed ``simcc_x (133, 576)`` and ``simcc_y (133, 768)``."""
    points, scores = tiny_pose_keypoints()
    simcc_x = np.zeros((NUM_WHOLEBODY, POSE_INPUT[1] * 2), dtype=np.float32)
    simcc_y = np.zeros((NUM_WHOLEBODY, POSE_INPUT[0] * 2), dtype=np.float32)
    rows = np.arange(NUM_WHOLEBODY)
    simcc_x[rows, np.round(points[:, 0] * 2).astype(int)] = scores
    simcc_y[rows, np.round(points[:, 1] * 2).astype(int)] = scores
    return simcc_x, simcc_y


def write_tiny_dwpose(folder: Path, dynamic_batch: bool = False, blank_means_nobody: bool = False) -> tuple[Path, Path]:
    """Write ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx`` stand-ins into ``folder``.

    Args:
        folder: output folder (created).
        dynamic_batch: give both models a dynamic batch axis (the released files have a fixed batch of 1).
        blank_means_nobody: the pose model reports no keypoints when the centre of its crop is one flat colour
            (an empty image), as the real model finds nobody there; otherwise it always reports the person.

    Returns:
        The detector and pose model paths.
    """
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    batch = "batch" if dynamic_batch else 1
    det = _constant_graph("images", [batch, 3, *DET_INPUT], {"output": detector_output()})
    simcc_x, simcc_y = pose_outputs()
    pose = _constant_graph(
        "input", [batch, 3, *POSE_INPUT], {"simcc_x": simcc_x, "simcc_y": simcc_y}, blank_means_nobody
    )
    det_path, pose_path = folder / "yolox_l.onnx", folder / "dw-ll_ucoco_384.onnx"
    onnx.save(det, str(det_path))
    onnx.save(pose, str(pose_path))
    return det_path, pose_path
