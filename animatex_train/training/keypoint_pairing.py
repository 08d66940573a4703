"""Training refuses the official keypoint row order on batches of several samples (see ``KeypointRowOrder``)."""

from __future__ import annotations

from animatex_train.models.config import DenoiserConfig


def check_keypoint_pairing(denoiser: DenoiserConfig, micro_batch: int | None) -> None:
    """Refuse to train the official keypoint row order on batches of several samples.

    ``official`` builds sample i's motion tokens from another sample's keypoints once a batch holds more than
    one sample (``models/config.py``, ``KeypointRowOrder``): a model trained so learns that mispairing.

    Raises:
        ValueError: naming the key, what it must be and how to fix it.
    """
    ipi = denoiser.ipi
    reads_keypoints = ipi.enabled and ipi.query != "learned"  # "learned" (w/o DQ) has no keypoint encoder
    if reads_keypoints and ipi.keypoint_row_order == "official" and micro_batch is not None and micro_batch > 1:
        raise ValueError(
            "model.denoiser.ipi.keypoint_row_order: official pairs each sample's motion tokens with another "
            "sample's keypoints at data.batch_size > 1 (the official encoder's frame-major rows); expected "
            f"per_sample for training, got official with data.batch_size={micro_batch}. Remove the key (per_sample "
            "is the default) or set it to per_sample; keep official only for parity checks at data.batch_size: 1"
        )
