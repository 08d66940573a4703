"""DWPose (YOLOX-L person detector + DWPose-L whole-body model) on onnxruntime, from user-supplied ONNX files.

The files are the ones the official Animate-X README asks for, ``yolox_l.onnx`` and
``dw-ll_ucoco_384.onnx`` (from the DWPose release); nothing is downloaded. Sessions use the CUDA execution
provider when onnxruntime has it. Frames go through the models in batches when a model's batch axis is
dynamic; the released files have a fixed batch of 1, so they run one frame at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.preprocess.pose import dwpose_ops

log = logging.getLogger(__name__)

DEFAULT_DET_INPUT = (640, 640)  # official inference_detector hard-codes 640 x 640


def execution_providers(device: str) -> list[str]:
    """onnxruntime providers for ``device`` (``auto``, ``cpu`` or ``cuda``).

    Raises:
        ValueError: ``cuda`` requested but this onnxruntime build has no CUDA provider.
    """
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ValueError(
            f"pose.device=cuda but onnxruntime offers only {available}; install onnxruntime-gpu or use pose.device=auto"
        )
    return ["CPUExecutionProvider"]


def _session(path: Path, providers: list[str], num_threads: int) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads  # 0 = onnxruntime's default (all cores)
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _static_batch(shape: list) -> int | None:
    """The fixed batch size of an input, or None when the axis is dynamic."""
    first = shape[0] if shape else None
    return first if isinstance(first, int) and first > 0 else None


def _spatial_size(shape: list, default: tuple[int, int] | None, what: str, path: Path) -> tuple[int, int]:
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise ValueError(f"{what} {path}: expected an input of shape (batch, 3, height, width), got {shape}")
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    if default is None:
        raise ValueError(f"{what} {path}: the input height/width must be fixed, got {shape}")
    return default


class DWPoseEstimator:
    """The official DWPose pipeline as a ``PoseEstimator``.

    Args:
        det_model: path of ``yolox_l.onnx`` (input ``(1, 3, 640, 640)`` float32 BGR 0..255; output
            ``(1, 8400, 85)``: box offsets, objectness, 80 class probabilities).
        pose_model: path of ``dw-ll_ucoco_384.onnx`` (input ``(1, 3, 384, 288)`` float32 normalised BGR;
            outputs ``simcc_x (1, 133, 576)`` and ``simcc_y (1, 133, 768)``).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        batch_size: frames per session call when a model accepts a dynamic batch.
        keep_face: keep the 68 face points.
        num_threads: onnxruntime intra-op threads (0 = its default).
    """

    name = "dwpose"

    def __init__(
        self,
        det_model: Path,
        pose_model: Path,
        device: str = "auto",
        batch_size: int = 8,
        keep_face: bool = True,
        num_threads: int = 0,
    ) -> None:
        providers = execution_providers(device)
        self.det = _session(Path(det_model), providers, num_threads)
        self.pose = _session(Path(pose_model), providers, num_threads)
        self.batch_size = batch_size
        self.keep_face = keep_face
        det_input = self.det.get_inputs()[0]
        pose_input = self.pose.get_inputs()[0]
        self.det_input_name, self.pose_input_name = det_input.name, pose_input.name
        self.det_size = _spatial_size(det_input.shape, DEFAULT_DET_INPUT, "detector", Path(det_model))
        self.pose_size = _spatial_size(pose_input.shape, None, "pose model", Path(pose_model))
        self.det_batch = _static_batch(det_input.shape) or batch_size
        self.pose_batch = _static_batch(pose_input.shape) or batch_size
        outputs = [o.name for o in self.pose.get_outputs()]
        if len(outputs) != 2:
            raise ValueError(f"pose model {pose_model}: expected 2 outputs (simcc_x, simcc_y), got {outputs}")
        # Match by name when the file uses the released names, else by position (x first, as released).
        self.simcc_names = ["simcc_x", "simcc_y"] if set(outputs) == {"simcc_x", "simcc_y"} else outputs
        log.info(
            "DWPose on %s: detector %s batch %d, pose %s batch %d",
            self.det.get_providers()[0],
            self.det_size,
            self.det_batch,
            self.pose_size,
            self.pose_batch,
        )

    def _run_batched(
        self, session: ort.InferenceSession, name: str, inputs: np.ndarray, batch: int, outputs: list[str] | None = None
    ) -> list[np.ndarray]:
        results = []
        for start in range(0, len(inputs), batch):
            results.append(session.run(outputs, {name: inputs[start : start + batch]}))
        return [np.concatenate([r[i] for r in results], axis=0) for i in range(len(results[0]))]

    def estimate(self, frames: np.ndarray) -> PoseSequence:
        """Keypoints of the first (highest-scoring) person in each frame.

        Args:
            frames: ``(n, h, w, 3)`` uint8 RGB.

        Returns:
            ``PoseSequence`` of ``n`` frames, normalised by ``(w, h)``.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (n, h, w, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        height, width = frames.shape[1:3]
        bgr = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in frames]  # the official models see BGR
        boxed = [dwpose_ops.letterbox(image, self.det_size) for image in bgr]
        det_in = np.stack([b[0] for b in boxed])
        raw = self._run_batched(self.det, self.det_input_name, det_in, self.det_batch)[0]  # official: output[0]
        if raw.ndim != 3 or raw.shape[0] != len(frames) or raw.shape[2] < 6:
            raise ValueError(f"detector output has shape {raw.shape}, expected ({len(frames)}, anchors, 5 + classes)")
        crops, centers, scales = [], [], []
        for image, raw_frame, (_, ratio) in zip(bgr, raw, boxed, strict=True):
            box = dwpose_ops.first_person_box(raw_frame, self.det_size, ratio)
            if box is None:  # official: without a detection, the whole image is the person box
                box = np.array([0.0, 0.0, float(width), float(height)])
            crop, center, scale = dwpose_ops.crop_person(image, box, self.pose_size)
            crops.append(crop)
            centers.append(center)
            scales.append(scale)
        simcc_x, simcc_y = self._run_batched(
            self.pose, self.pose_input_name, np.stack(crops), self.pose_batch, outputs=self.simcc_names
        )
        expected_x, expected_y = self.pose_size[1] * 2, self.pose_size[0] * 2
        if simcc_x.shape[1:] != (dwpose_ops.NUM_WHOLEBODY, expected_x) or simcc_y.shape[1:] != (
            dwpose_ops.NUM_WHOLEBODY,
            expected_y,
        ):
            raise ValueError(
                f"pose model outputs {simcc_x.shape} and {simcc_y.shape}, expected (n, 133, {expected_x}) and "
                f"(n, 133, {expected_y}) for a {self.pose_size} input"
            )
        packed = []
        for i in range(len(frames)):
            keypoints, scores = dwpose_ops.decode_simcc(simcc_x[i], simcc_y[i], self.pose_size, centers[i], scales[i])
            keypoints, scores = dwpose_ops.to_openpose(keypoints, scores)
            packed.append(dwpose_ops.to_packed(keypoints, scores, (height, width), self.keep_face))
        return PoseSequence.from_array(np.stack(packed), (height, width), name="dwpose keypoints")
