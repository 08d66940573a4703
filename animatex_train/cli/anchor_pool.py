"""``animatex-train anchor-pool``: sample the explicit pose indicator's anchor poses from prepared shards."""

from __future__ import annotations

import sys

from animatex_train.cli.arguments import CommandParser
from animatex_train.data.epi.anchor_pool import DEFAULT_FRAME_SIZE, AnchorPoolError, anchor_pool_from_sources
from animatex_train.data.format.keypoints import KeypointError
from animatex_train.data.format.schema import SampleError
from animatex_train.data.format.shard_reader import ShardReadError


def build_parser() -> CommandParser:
    parser = CommandParser(
        "anchor-pool", "Sample full-body anchor poses for the explicit pose indicator from prepared shards."
    )
    parser.add_argument("--shards", nargs="*", default=[], help=".tar files, directories, .txt shard lists or globs")
    parser.add_argument("--output", required=True, help="pool path (.npy); a .json sidecar is written next to it")
    parser.add_argument("--num_anchors", type=int, default=1000, help="pool size")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--min_visible", type=int, default=12, help="minimum visible body points of an anchor")
    parser.add_argument("--max_per_clip", type=int, default=1, help="most anchors taken from one clip")
    parser.add_argument("--split", default="train", help="meta.json split to read ('any' reads every split)")
    parser.add_argument("--add", nargs="*", default=[], help="extra anchor files (.npy or .json), e.g. cartoon poses")
    parser.add_argument(
        "--default_frame_size",
        type=int,
        nargs=2,
        default=list(DEFAULT_FRAME_SIZE),
        metavar=("HEIGHT", "WIDTH"),
        help="frame size of anchor files that do not state one",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build and save the pool; 0 on success, 1 when the sources hold no usable anchor."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.shards and not args.add:
        parser.error("give --shards and/or --add")
    try:
        pool = anchor_pool_from_sources(
            args.shards,
            args.add,
            args.num_anchors,
            args.seed,
            args.min_visible,
            args.max_per_clip,
            None if args.split == "any" else args.split,
            (args.default_frame_size[0], args.default_frame_size[1]),
        )
        path = pool.save(args.output)
    except (AnchorPoolError, SampleError, KeypointError, FileNotFoundError, ShardReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(pool)} anchors to {path} (+ {path.with_suffix('.json').name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
