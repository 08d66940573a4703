"""FrozenCLIPImageEncoder (tiny, random weights): embeddings, official preprocessing, zero_y, loading and errors."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from animatex_train.encoders.clip import CLIPConfig, FrozenCLIPImageEncoder


@pytest.fixture(scope="module")
def encoder() -> FrozenCLIPImageEncoder:
    return FrozenCLIPImageEncoder(CLIPConfig(tiny=True))


def _image(h: int = 300, w: int = 170, n: int = 1, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 RGB images (n, h, w, 3): low-frequency content, like photos."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return (smooth.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pil_resize(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The official transform: PIL bilinear resize to a square (no crop), as `utils/transforms.py::Resize`."""
    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def test_embedding_shape_and_determinism(encoder: FrozenCLIPImageEncoder) -> None:
    images = _image(n=3)
    emb = encoder.encode_images(images)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32
    assert encoder.embed_dim == 64 and encoder.text_width == 64
    assert torch.equal(emb, encoder.encode_images(images))
    other = FrozenCLIPImageEncoder(CLIPConfig(tiny=True))  # same seed, same weights
    torch.testing.assert_close(other.encode_images(images), emb)
    assert not torch.allclose(FrozenCLIPImageEncoder(CLIPConfig(tiny=True, seed=1)).encode_images(images), emb)


def test_batching_and_input_kinds_agree(encoder: FrozenCLIPImageEncoder) -> None:
    images = _image(n=3)
    emb = encoder.encode_images(images)
    small_batches = FrozenCLIPImageEncoder(CLIPConfig(tiny=True, batch_size=2))
    torch.testing.assert_close(small_batches.encode_images(images), emb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.encode_images(torch.from_numpy(images)), emb)
    square = np.stack([_pil_resize(im) for im in images])
    as_float = torch.from_numpy(square).permute(0, 3, 1, 2).float() / 255  # (n, 3, 224, 224) in [0, 1]
    torch.testing.assert_close(encoder.encode_images(as_float), encoder.encode_images(square))


def test_preprocessing_is_plain_bilinear_resize(encoder: FrozenCLIPImageEncoder) -> None:
    image = _image(h=300, w=170)  # non-square: a crop or an aspect-keeping resize would differ
    manual = _pil_resize(image[0])[None]
    ours = encoder.preprocess(image)
    reference = encoder.preprocess(manual)  # already 224 x 224: only normalised
    assert ours.shape == (1, 3, 224, 224)
    one_level = 1 / 255 / min(encoder.config.std)
    assert (ours - reference).abs().max().item() <= one_level + 1e-6
    mean = torch.tensor(encoder.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(reference, (torch.from_numpy(manual).permute(0, 3, 1, 2) / 255 - mean) / std)

    emb = encoder.encode_images(image)
    torch.testing.assert_close(emb, encoder.encode_images(manual), rtol=1e-3, atol=1e-3)
    top = (300 - 170) // 2
    cropped = _pil_resize(np.ascontiguousarray(image[0, top : top + 170]))[None]  # a centre crop, not official
    crop_gap = (encoder.encode_images(cropped) - emb).abs().max().item()
    assert crop_gap > 10 * (encoder.encode_images(manual) - emb).abs().max().item()


def test_rejects_bad_image_layouts(encoder: FrozenCLIPImageEncoder) -> None:
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        encoder.encode_images(_image()[0])
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        encoder.encode_images(torch.rand(1, 224, 224, 3))
    with pytest.raises(ValueError, match="dtype"):
        encoder.encode_images(torch.zeros(1, 3, 224, 224, dtype=torch.int32))


def _manual_text_layers(model: open_clip.CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """The official FrozenOpenCLIPTextVisualEmbedder on "", written out: (penultimate, last) after ln_final."""
    tokens = open_clip.tokenize([""])
    assert tokens[0, :2].tolist() == [49406, 49407] and tokens.shape == (1, 77)
    x = model.token_embedding(tokens) + model.positional_embedding
    blocks = model.transformer.resblocks
    for block in blocks[: len(blocks) - 1]:  # layer="penultimate": every block but the last
        x = block(x, attn_mask=model.attn_mask)
    last = blocks[-1](x, attn_mask=model.attn_mask)
    return model.ln_final(x), model.ln_final(last)


def test_empty_prompt_tokens_match_official_computation() -> None:
    encoder = FrozenCLIPImageEncoder(CLIPConfig(tiny=True))
    zero_y = encoder.empty_prompt_tokens()
    assert zero_y.shape == (1, 77, 64) and zero_y.dtype == torch.float32
    with torch.no_grad():
        expected, last_layer = _manual_text_layers(encoder.model)
    torch.testing.assert_close(zero_y, expected)
    assert not torch.allclose(zero_y, last_layer)

    def fail(*args, **kwargs):
        raise AssertionError("zero_y must be cached after the first call")

    encoder.model.forward_intermediates = fail
    assert torch.equal(encoder.empty_prompt_tokens(), zero_y)


def test_zero_y_save_load_round_trip(tmp_path) -> None:
    encoder = FrozenCLIPImageEncoder(CLIPConfig(tiny=True))
    path = tmp_path / "zero_y.safetensors"
    encoder.save_zero_y(path)
    loaded = FrozenCLIPImageEncoder.load_zero_y(path)
    assert torch.equal(loaded, encoder.empty_prompt_tokens())

    fresh = FrozenCLIPImageEncoder(CLIPConfig(tiny=True, seed=3))
    fresh.set_zero_y(loaded)
    fresh.release_text_tower()
    assert fresh.model.transformer is None
    assert torch.equal(fresh.empty_prompt_tokens(), loaded)
    assert fresh.encode_images(_image()).shape == (1, 64)  # the image path survives the release

    with pytest.raises(FileNotFoundError, match="save_zero_y"):
        FrozenCLIPImageEncoder.load_zero_y(tmp_path / "missing.safetensors")


def test_zero_y_is_written_atomically(tmp_path, monkeypatch) -> None:
    """Another rank may read the cache while rank 0 writes it: a reader sees the old file or the new one, whole."""
    import animatex_train.encoders.clip as clip_module

    encoder = FrozenCLIPImageEncoder(CLIPConfig(tiny=True))
    path = tmp_path / "cache" / "zero_y.safetensors"  # the folder does not exist yet
    encoder.save_zero_y(path)
    original = path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left

    def crash_mid_write(tensors, filename, metadata=None):
        with open(filename, "wb") as partial:
            partial.write(b"\x10\x00\x00\x00")  # a few bytes, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(clip_module, "save_file", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        FrozenCLIPImageEncoder(CLIPConfig(tiny=True, seed=3)).save_zero_y(path)
    assert path.read_bytes() == original  # readers still find the complete earlier file
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_an_unreadable_zero_y_cache_is_computed_again(tmp_path, caplog) -> None:
    from animatex_train.system import _read_zero_y

    encoder = FrozenCLIPImageEncoder(CLIPConfig(tiny=True))
    path = tmp_path / "zero_y.safetensors"
    assert _read_zero_y(path) is None  # absent
    encoder.save_zero_y(path)
    assert torch.equal(_read_zero_y(path), encoder.empty_prompt_tokens())
    path.write_bytes(path.read_bytes()[:20])  # cut short (by a writer from before writes were atomic)
    assert _read_zero_y(path) is None
    assert "empty_prompt_cache" in caplog.text and "unreadable" in caplog.text


def test_missing_checkpoint_names_the_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"clip\.checkpoint.*open_clip_pytorch_model\.bin"):
        FrozenCLIPImageEncoder(CLIPConfig(checkpoint=str(tmp_path / "open_clip_pytorch_model.bin")))
    with pytest.raises(ValueError, match=r"model\.clip\.checkpoint is required unless model\.clip\.tiny"):
        CLIPConfig().require_weights("model.clip")  # the default instance is valid (listed by `fit --help`)
    with pytest.raises(ValueError, match=r"clip\.checkpoint"):
        FrozenCLIPImageEncoder(CLIPConfig())


def test_loads_weights_only_checkpoint_and_refuses_pickles(tmp_path) -> None:
    source = FrozenCLIPImageEncoder(CLIPConfig(tiny=True, seed=0))
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.model.state_dict(), path)
    loaded = FrozenCLIPImageEncoder(CLIPConfig(tiny=True, seed=1, checkpoint=str(path)))
    images = _image()
    torch.testing.assert_close(loaded.encode_images(images), source.encode_images(images))

    evil = tmp_path / "evil.bin"
    torch.save({"payload": _NotATensor()}, evil)
    with pytest.raises(OSError, match="weights-only"):
        FrozenCLIPImageEncoder(CLIPConfig(tiny=True, checkpoint=str(evil)))


class _NotATensor:
    pass


def test_frozen_and_stays_in_eval(encoder: FrozenCLIPImageEncoder) -> None:
    assert encoder.frozen is True
    assert not any(p.requires_grad for p in encoder.parameters())
    parent = nn.ModuleDict({"clip": encoder, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in encoder.modules())
