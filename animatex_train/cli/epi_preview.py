"""``animatex-train epi-preview``: a PNG grid of original | realigned | rescaled poses (what EPI does)."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from animatex_train.cli.arguments import CommandParser
from animatex_train.data.epi.anchor_pool import AnchorPool, AnchorPoolError, expand_shard_paths, iter_shard_poses
from animatex_train.data.epi.preview import demo_anchor_pool, demo_pose_sequence, render_preview_grid
from animatex_train.data.epi.transform import EPIConfig
from animatex_train.data.format.keypoints import KeypointError


def build_parser() -> CommandParser:
    parser = CommandParser(
        "epi-preview",
        "A PNG grid of original | realigned | rescaled pose images: what the "
        "explicit pose indicator does to a few samples.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", nargs="+", help=".tar files, directories, .txt shard lists or globs")
    source.add_argument("--demo", action="store_true", help="use generated demo poses instead of shards")
    parser.add_argument("--anchor_pool", help="pool .npy (default with --demo: demo anchors)")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--num_samples", type=int, default=4, help="rows")
    parser.add_argument("--frames_per_sample", type=int, default=3, help="frames per stage")
    parser.add_argument("--tile_size", type=int, nargs=2, default=[384, 256], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument(
        "--config",
        help="recipe or overlay whose data.epi values to use, e.g. "
        "recipes/ablations/wo_add.yaml (default: the EPI defaults)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the preview; 0 on success, 1 when the inputs cannot be read."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shards and not args.anchor_pool:
        parser.error("--anchor_pool is required with --shards")
    try:
        config = EPIConfig.from_recipe(args.config) if args.config else EPIConfig()
        if args.demo:
            poses = [demo_pose_sequence(48, seed=1000 + i) for i in range(args.num_samples)]
        else:
            poses = []
            for _, pose in iter_shard_poses(expand_shard_paths(args.shards), split=None):
                poses.append(pose)
                if len(poses) == args.num_samples:
                    break
        anchors = AnchorPool.load(args.anchor_pool) if args.anchor_pool else demo_anchor_pool()
        grid = render_preview_grid(
            poses, anchors, config, args.seed, args.frames_per_sample, tuple(args.tile_size), epoch=args.epoch
        )
    except (AnchorPoolError, KeypointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(output)
    print(f"wrote {output} ({grid.shape[1]}x{grid.shape[0]}, {len(poses)} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
