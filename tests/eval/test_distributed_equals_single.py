"""Two processes (gloo) scoring half of the videos each give the metrics of one process scoring all: paired scores
and per-video rows are gathered, feature statistics merged before the Fréchet distances (FID to 1e-6 relative)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from animatex_train.eval.metrics.distribution import ClipFeatureStream, FrameFeatureStream
from animatex_train.eval.metrics.suite import MetricsConfig, MetricSuite

NUM_VIDEOS, NUM_FRAMES, SIZE = 6, 5, 32


class FrameNet(nn.Module):
    """A small stand-in for the Inception (the gathering is what is under test): (b, H, W, 3) uint8 -> (b, 8)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.conv(frames.permute(0, 3, 1, 2).float() / 255).relu().mean((2, 3))


class ClipNet(nn.Module):
    """(b, 3, f, S, S) -> (b, 6)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(3, 6, 3, stride=(1, 4, 4))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.conv(clips).tanh().mean((2, 3, 4))


def _videos() -> list[tuple[str, list[np.ndarray], list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    out = []
    for v in range(NUM_VIDEOS):
        gt = rng.integers(0, 256, (NUM_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
        noise = rng.integers(-20, 21, gt.shape)
        out.append((f"video{v}", list(gt), list(np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8))))
    return out


def _score(rank: int, world: int) -> dict:
    suite = MetricSuite(MetricsConfig(metrics=["psnr_star", "ssim", "l1"]))
    suite.frames = FrameFeatureStream(FrameNet(), batch_size=4)
    suite.clips = {"fvd": ClipFeatureStream(ClipNet(), "fvd", clip_mode="whole")}
    for index, (name, gt, gen) in enumerate(_videos()):
        if index % world == rank:
            suite.add_video_pair(name, gen, gt)
    return suite.compute()


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _score(rank, world)
        queue.put((rank, result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_metrics_of_one():
    single = _score(0, 1)
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, 2, _free_port_once(), queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=240) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank in (0, 1):
        two = results[rank]
        assert two["counts"] == single["counts"]
        assert two["per_video"].keys() == single["per_video"].keys()
        for video, row in single["per_video"].items():
            assert two["per_video"][video] == pytest.approx(row, rel=1e-12), video
        for name, value in single["metrics"].items():
            assert two["metrics"][name] == pytest.approx(value, rel=1e-6), name
    assert single["metrics"]["fid"] > 0 and single["counts"]["fid_frames"] == {"gen": 30, "real": 30}


_PORT: list[int] = []


def _free_port_once() -> int:
    if not _PORT:
        _PORT.append(_free_port())
    return _PORT[0]
