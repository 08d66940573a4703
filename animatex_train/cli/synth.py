"""``animatex-train synth``: write the synthetic character-animation videos (``data/synthetic``)."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

from animatex_train.cli.arguments import CommandParser
from animatex_train.data.synthetic.dataset import METADATA_FILE, SyntheticDatasetConfig, write_synthetic_dataset


def build_parser() -> CommandParser:
    parser = CommandParser("synth", "Write the synthetic character-animation dataset (videos, keypoints, metadata).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="values-only YAML, e.g. data/embedded_dataset.yaml")
    parser.add_argument("--num_videos", type=int, help="override num_videos")
    parser.add_argument("--num_val_videos", type=int, help="override num_val_videos")
    parser.add_argument("--seed", type=int, help="override seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the dataset; 0 on success, 2 on a bad configuration."""
    args = build_parser().parse_args(argv)
    try:
        config = SyntheticDatasetConfig.from_yaml(args.config) if args.config else SyntheticDatasetConfig()
        overrides = {"num_videos": args.num_videos, "num_val_videos": args.num_val_videos, "seed": args.seed}
        config = replace(config, **{key: value for key, value in overrides.items() if value is not None})
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"animatex-train synth: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    videos = write_synthetic_dataset(args.out, config)
    written = [*videos, *(path.with_name(path.stem + ".pose.npy") for path in videos), args.out / METADATA_FILE]
    total_bytes = sum(path.stat().st_size for path in written)
    print(
        f"wrote {len(videos)} videos ({total_bytes / 1e6:.2f} MB) to {args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
