"""One flag style for every subcommand: the Lightning/jsonargparse one, ``--max_steps``, ``--trainer.max_steps``.

``fit``/``validate`` take jsonargparse's dotted underscore keys and cannot take anything else, so the project's own
subcommands are declared in the same style. Hyphenated spellings (``--max-steps``) are accepted everywhere as the
same flag, because that is what argparse-era muscle memory and Slurm-style options type; help and docs show one
spelling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def normalise_flags(argv: Sequence[str]) -> list[str]:
    """``--world-size`` -> ``--world_size`` for every long option name; values (after ``=``) are left alone."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":  # what follows is positional, not flags
            return out + list(argv[index:])
        if arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


class CommandParser(argparse.ArgumentParser):
    """``argparse`` for ``animatex-train <subcommand>``: underscore long options, hyphenated spellings accepted.

    Abbreviations are off: ``--num_frame`` must not silently mean ``--num_frames``.
    """

    def __init__(self, subcommand: str, description: str, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(prog=f"animatex-train {subcommand}", description=description, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        for action in self._actions:  # groups add to the same list
            for name in action.option_strings:
                if name.startswith("--") and "-" in name[2:]:
                    raise ValueError(
                        f"{self.prog}: declare {name!r} as {normalise_flags([name])[0]!r} "
                        "(one flag style, cli/arguments.py)"
                    )
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(normalise_flags(argv), namespace)


def split_passthrough(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(own arguments, arguments after --)``; None reads the process's command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def add_generation_weight_flags(group: argparse._ArgumentGroup) -> None:
    """The weight files of a generation (``animate``, and ``evaluate``, which generates through it)."""
    group.add_argument("--checkpoint", help="animate-x.pth, our .safetensors export, or a training checkpoint folder")
    group.add_argument("--weights", choices=("ema", "raw"), default="ema", help="of a training checkpoint")
    group.add_argument("--model_config", help="YAML/JSON {denoiser: ...} or {official: ...} for files without one")
    group.add_argument("--vae", help="v2-1_512-ema-pruned.ckpt/.safetensors or a diffusers VAE folder")
    group.add_argument("--clip", help="open_clip_pytorch_model.bin (ViT-H-14)")
    group.add_argument("--dwpose_det", help="yolox_l.onnx (driving videos without keypoints)")
    group.add_argument("--dwpose_pose", help="dw-ll_ucoco_384.onnx")
    group.add_argument("--tiny", action="store_true", help="tiny random VAE/CLIP (and denoiser): smoke tests only")
    group.add_argument("--trust_checkpoint", action="store_true", help="unrestricted unpickling (your own runs only)")
