"""The baseline the streaming loader is compared with: decode-on-the-fly, in the style of
Moore-AnimateAnyone's ``src/dataset/dance_video.py`` / MusePose (docs/performance.md §5.2), written
here for the comparison only.

A map-style dataset over (video.mp4, pose.mp4) pairs. Per sample it opens both videos with a maintained
video library (PyAV, i.e. FFmpeg's H.264 decoder, one thread), reads a random window of ``num_frames``
frames from each and a random reference frame from the video the way decord's ``VideoReader[i]`` does
(continue decoding forward when ``i`` is ahead, go back to the keyframe and decode forward when it is
behind), converts every frame to PIL, resizes to the training resolution and prepares the reference for
CLIP. It returns pixel tensors, so the VAE and CLIP encoders must then run on every sample
(``encode_batch``); peers run them on the GPU inside the training step.
"""

from __future__ import annotations

import random

import av
import numpy as np
import torch
from PIL import Image


class FrameReader:
    """decord-style random frame access over one video with PyAV (single-threaded decoding)."""

    def __init__(self, path: str):
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = 1  # one core: the comparison is per core
        self.num_frames = self.stream.frames
        self._restart()

    def _restart(self) -> None:
        self.container.seek(0, stream=self.stream)  # the clip's (only) keyframe
        self._decoder = self.container.decode(self.stream)
        self._position = -1

    def __getitem__(self, index: int) -> Image.Image:
        if index <= self._position:
            self._restart()
        while self._position < index:
            frame = next(self._decoder)
            self._position += 1
        return frame.to_image()

    def close(self) -> None:
        self.container.close()


class DecodeOnTheFlyDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[tuple[str, str]], num_frames: int, size: tuple[int, int], seed: int = 0):
        self.pairs, self.num_frames, self.size, self.seed = pairs, num_frames, size, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        video_path, pose_path = self.pairs[index]
        rng = random.Random(self.seed * 100003 + index)
        video, pose = FrameReader(video_path), FrameReader(pose_path)
        try:
            total = video.num_frames
            start = rng.randint(0, total - self.num_frames)
            window = range(start, start + self.num_frames)
            ref = rng.randint(0, total - 1)
            height, width = self.size
            frames = [video[i].resize((width, height), Image.BILINEAR) for i in window]
            poses = [pose[i].resize((width, height), Image.BILINEAR) for i in window]
            ref_image = video[ref].resize((width, height), Image.BILINEAR)  # after the window, as peers read it
        finally:
            video.close()
            pose.close()
        clip_input = ref_image.resize((224, 224), Image.BICUBIC)

        def to_tensor(images: list[Image.Image]) -> torch.Tensor:
            return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)

        return {
            "frames": to_tensor(frames).float() / 127.5 - 1,
            "poses": to_tensor(poses).float() / 255.0,
            "ref": to_tensor([ref_image]).float() / 127.5 - 1,
            "clip_input": to_tensor([clip_input]).float() / 255.0,
        }


def encode_batch(sample: dict, vae, clip) -> None:
    """What the baseline's training step runs before the denoiser: VAE on every frame, CLIP on the reference."""
    with torch.no_grad():
        vae.encode_pixels(torch.cat([sample["ref"], sample["frames"]]))
        clip.encode_images(sample["clip_input"])
