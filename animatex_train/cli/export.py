"""``animatex-train export``: the denoiser of a verified checkpoint -> safetensors (and the official ``.pth``).

What is accepted and how it is read without executing code: ``training/export.py``.
"""

from __future__ import annotations

import logging
import sys

from animatex_train.cli.arguments import CommandParser
from animatex_train.training.export import DTYPES, ExportError, export_weights


def build_parser() -> CommandParser:
    parser = CommandParser(
        "export", "Export the denoiser of a verified checkpoint as safetensors (and the official .pth layout)."
    )
    parser.add_argument(
        "checkpoint",
        help="a run's checkpoints/ folder (newest complete), a step-<N> folder or its "
        "state.ckpt (a file, or a DeepSpeed ZeRO folder)",
    )
    parser.add_argument("--output", "-o", required=True, help="the .safetensors file to write")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="EMA weights (default) or the raw trained weights"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="tensor dtype of the outputs")
    parser.add_argument("--official", metavar="PTH", help="also write the official animate-x.pth layout here")
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="unpickle without restrictions (only for checkpoints from your own runs)",
    )
    parser.add_argument(
        "--skip_hashes",
        action="store_true",
        help="verify sizes and markers but not sha256 (faster on very large checkpoints)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Export; 0 on success, 2 when the checkpoint cannot be exported as asked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        parser.error(f"--output must end with .safetensors, got {args.output}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = export_weights(
            args.checkpoint,
            args.output,
            args.weights,
            args.dtype,
            args.official,
            args.trust_checkpoint,
            not args.skip_hashes,
        )
    except (ExportError, FileNotFoundError) as error:
        print(f"animatex-train export: error: {error}", file=sys.stderr)
        return 2
    params = sum(v.numel() for v in result.state.values())
    print(
        f"exported {result.weights} weights of step {result.step} ({len(result.state)} tensors, {params:,} values, "
        f"{args.dtype}) from {result.source} to {args.output}" + (f" and {args.official}" if args.official else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
