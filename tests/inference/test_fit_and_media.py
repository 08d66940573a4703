"""Reference fit (pixels and keypoints move together), EXIF orientation, transparency, official frame folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from animatex_train.inference.fit import FitGeometry, default_canvas
from animatex_train.inference.media import load_reference, open_driving


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("source", [(120, 80), (80, 120), (100, 100)])
def test_keypoints_follow_the_pixels(mode, source):
    """A bright dot drawn at a keypoint lands, after the fit, where the transformed keypoint says."""
    canvas = (64, 128)
    geometry = FitGeometry.fit(mode, source, canvas)
    rng = np.random.default_rng(0)
    for _ in range(5):
        point = rng.uniform(0.42, 0.58, size=2)  # (x, y) normalised: inside what any of the crops keeps
        image = np.zeros((*source, 3), dtype=np.uint8)
        x, y = int(point[0] * source[1]), int(point[1] * source[0])
        image[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = 255
        fitted = geometry.apply(image)
        assert fitted.shape == (*canvas, 3)
        mapped = geometry.transform_points(np.array([[(x + 0.5) / source[1], (y + 0.5) / source[0]]]))[0]
        ys, xs = np.nonzero(fitted[..., 0] > 100)
        assert abs(xs.mean() + 0.5 - mapped[0] * canvas[1]) < 2.0 and abs(ys.mean() + 0.5 - mapped[1] * canvas[0]) < 2.0


def test_crop_drops_points_outside_and_pad_fills_the_background():
    crop = FitGeometry.fit("crop", (100, 400), (100, 100))  # wide source, square canvas: the sides are cut
    assert crop.transform_points(np.array([[0.05, 0.5], [0.5, 0.5], [-1.0, -1.0]])).tolist()[0] == [-1.0, -1.0]
    assert crop.transform_points(np.array([[-1.0, -1.0]])).tolist() == [[-1.0, -1.0]]
    pad = FitGeometry.fit("pad", (100, 400), (100, 100))
    fitted = pad.apply(np.full((100, 400, 3), 7, np.uint8), fill=(255, 0, 0))
    assert (fitted[0, 0] == (255, 0, 0)).all() and (fitted[50, 50] == 7).all()
    assert default_canvas((300, 200)) == (768, 512) and default_canvas((200, 300)) == (512, 768)


def test_exif_orientation_and_transparency(inf):
    upright = load_reference(inf.MEDIA / "portrait.jpg")
    rotated = load_reference(inf.MEDIA / "exif_rotated.jpg")
    assert rotated.shape == upright.shape  # stored sideways, read upright
    assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 12  # same picture (two JPEG generations)
    composited = load_reference(inf.MEDIA / "rgba.png", bg=(0, 255, 0))
    assert (composited[0, 0] == (0, 255, 0)).all()  # transparent corner -> the background
    dropped = load_reference(inf.MEDIA / "rgba.png", official=True)
    assert (dropped[0, 0] == (255, 0, 255)).all()  # official cv2.imread keeps the hidden colour
    with pytest.raises(FileNotFoundError, match="--ref"):
        load_reference(inf.MEDIA / "missing.png")


def test_official_frames_folder_is_sorted_by_number(tmp_path):
    for i in (10, 2, 1):  # listdir order would be arbitrary; 'frame_10' sorts before 'frame_2' as text
        Image.new("RGB", (8, 6), (i, i, i)).save(tmp_path / f"frame_{i:d}.jpg", quality=100)
    Image.new("RGB", (8, 6)).save(tmp_path / "ref_pose.jpg")
    source = open_driving(tmp_path, folder_fps=8)
    assert [p.name for p in source.frame_files] == ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]
    assert source.info.num_frames == 3 and float(source.info.fps) == 8.0
    frames = source.frames(np.array([2, 0, 2]))
    assert sorted(frames) == [0, 2] and abs(int(frames[2][0, 0, 0]) - 10) <= 2
    with pytest.raises(ValueError, match="--pkl"):
        open_driving(tmp_path)


def test_video_frames_decode_by_index(inf):
    source = open_driving(inf.MEDIA / "dance_10f.mp4")
    assert source.info.num_frames == 10
    frames = source.frames(np.array([9, 3]))
    assert sorted(frames) == [3, 9] and frames[3].shape == (190, 128, 3)
