"""``animatex-train prepare``: videos -> keypoints, CLIP features, VAE latents -> WebDataset shards.

Examples::

    # one process: everything, then the manifest
    animatex-train prepare --config prepare.yaml
    # 8 ranks (torchrun sets RANK/WORLD_SIZE; a Slurm array works the same), then merge once
    torchrun --nproc_per_node 8 -m animatex_train.cli.prepare --config prepare.yaml
    animatex-train prepare --config prepare.yaml --stages merge
    # keypoints in another venv (mediapipe), the rest here
    .venv-pose/bin/animatex-train prepare --config prepare.yaml --stages pose --pose.method mediapipe
    animatex-train prepare --config prepare.yaml --pose.method sidecar --pose.sidecar_dir out/poses

Rerunning the same command resumes where it stopped. The settings are ``preprocess/config.py``'s
``PrepareConfig``; ``--help`` lists them all.
"""

from __future__ import annotations

import logging
import sys

from animatex_train.cli.arguments import normalise_flags
from animatex_train.cli.errors import full_key_paths
from animatex_train.preprocess.inputs import InputError
from animatex_train.preprocess.journal import JournalError
from animatex_train.preprocess.merge import MergeError
from animatex_train.preprocess.prepare import parse_prepare_config, prepare_dataset


def main(argv: list[str] | None = None) -> int:
    """Run ``prepare``.

    Args:
        argv: arguments without the program name; None = ``sys.argv[1:]``.

    Returns:
        0 on success (rejected videos do not count as failure; see the summary and ``rejects.jsonl``), 2 on a
        configuration or input error, 1 when the run cannot complete (journal or merge problem).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_prepare_config(normalise_flags(list(sys.argv[1:] if argv is None else argv)))
    except (ValueError, TypeError, InputError) as error:  # jsonargparse errors and our __post_init__ checks
        print(f"animatex-train prepare: error: {full_key_paths(str(error), 'prepare')}", file=sys.stderr)
        return 2
    try:
        prepare_dataset(config)
    except InputError as error:
        print(f"animatex-train prepare: error: {full_key_paths(str(error), 'prepare')}", file=sys.stderr)
        return 2
    except (JournalError, MergeError) as error:
        print(f"animatex-train prepare: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
