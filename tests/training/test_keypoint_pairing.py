"""Training the official keypoint row order at micro-batch > 1 is refused at setup, with the key and the fix."""

from __future__ import annotations

import pytest
from support.tiny_dataset import fit_args, shared_dataset

from animatex_train.cli.lightning import AnimateXCLI
from animatex_train.models.config import ImplicitPoseIndicatorConfig, tiny_denoiser_config
from animatex_train.training.keypoint_pairing import check_keypoint_pairing


def test_official_order_with_a_micro_batch_of_two_fails_at_setup(tmp_path_factory, tmp_path):
    args = fit_args(shared_dataset(tmp_path_factory), tmp_path / "run", max_steps=1)[1:]  # no "fit" with run=False
    cli = AnimateXCLI(
        args=[*args, "--model.denoiser.ipi.keypoint_row_order=official", "--data.batch_size=2"], run=False
    )
    with pytest.raises(ValueError) as error:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    message = str(error.value)
    assert message.startswith("model.denoiser.ipi.keypoint_row_order: ")
    assert "expected per_sample for training, got official with data.batch_size=2" in message
    assert "Remove the key" in message and "data.batch_size: 1" in message  # the fixes
    assert cli.trainer.global_step == 0


def _config(**ipi_overrides):
    base = tiny_denoiser_config()
    return tiny_denoiser_config(ipi=ImplicitPoseIndicatorConfig(**{**vars(base.ipi), **ipi_overrides}))


@pytest.mark.parametrize(
    "overrides, micro_batch",
    [
        ({"keypoint_row_order": "official"}, 1),  # batch 1: the official order is the per-sample order
        ({"keypoint_row_order": "official"}, None),  # no data module: nothing to check against
        ({"keypoint_row_order": "official", "enabled": False}, 4),  # no IPI
        ({"keypoint_row_order": "official", "query": "learned"}, 4),  # w/o DQ: no keypoint encoder
        ({}, 4),  # the default, per_sample
    ],
)
def test_cases_where_the_row_order_cannot_mispair_are_accepted(overrides, micro_batch):
    check_keypoint_pairing(_config(**overrides), micro_batch)


def test_official_order_that_reads_keypoints_is_refused_for_every_query_that_uses_them():
    for query in ("learned+keypoints", "keypoints", "clip"):
        with pytest.raises(ValueError, match=r"model\.denoiser\.ipi\.keypoint_row_order"):
            check_keypoint_pairing(_config(keypoint_row_order="official", query=query), 2)
