"""``animatex-train evaluate``: generate a test set through ``animate`` and score it with the paper's seven metrics.

The metrics are computed as DisCo computes them (docs/evaluation.md).

    animatex-train evaluate --recipe recipes/eval/self_driven.yaml --checkpoint run/checkpoints \\
        --vae ... --clip ... --test_set tests.jsonl -o eval_out \\
        --weights.fid_inception pt_inception-2015-12-05-6726825d.pth --weights.vgg16 vgg16-397923af.pth \\
        --weights.i3d i3d_pretrained_400.pt --weights.r3d50 resnet-50-kinetics.pth

Several processes (``torchrun --nproc_per_node N -m animatex_train.cli.evaluate ...``) split the videos and give the
numbers of one. ``--gen_dir/--gt_dir`` score two existing frame folders instead (DisCo's ``gen_eval.sh``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from animatex_train.cli.arguments import CommandParser, add_generation_weight_flags
from animatex_train.cli.errors import full_key_paths
from animatex_train.eval.metrics.suite import ALL_METRICS, WeightPaths
from animatex_train.eval.metrics.weights import WEIGHT_FILES


def build_parser() -> CommandParser:
    p = CommandParser("evaluate", __doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", help="recipes/eval/<protocol>.yaml")
    p.add_argument("--test_set", help="test manifest (.jsonl) or synth folder; overrides the recipe's test_set")
    p.add_argument("-o", "--output", default="eval_out", help="report folder")
    p.add_argument("--max_videos", type=int, help="evaluate the first N videos only")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(ALL_METRICS)}")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe key (num_frames=32, metrics.clip_mode=whole, animate.inputs.size=[256,256]); "
        "YAML values; repeatable",
    )
    g = p.add_argument_group("generation weights (as `animate`; nothing is downloaded)")
    add_generation_weight_flags(g)
    g.add_argument("--steps", type=int, help="DDIM steps (default: the recipe's, else 30)")
    g.add_argument("--seed", type=int, help="sampling seed")
    g.add_argument("--device", help="cuda, cuda:N or cpu")
    m = p.add_argument_group("metric networks (local files, else the torch hub cache)")
    for key, spec in WEIGHT_FILES.items():
        m.add_argument(f"--weights.{key}", dest=f"weights_{key}", help=f"{spec.filename}: {spec.metric}")
    f = p.add_argument_group("score existing frame folders (no generation)")
    f.add_argument("--gen_dir", help="generated frames (PNG/JPG, DisCo names e.g. TiktokDance_<vid>_<idx>.png)")
    f.add_argument("--gt_dir", help="ground-truth frames with the same names")
    p.add_argument("--no_progress", dest="progress", action="store_false")
    return p


def _recipe_overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        node = overrides
        parts = key.split(".")
        if parts[0] == "animate":  # AnimateSettings keys are dotted in the recipe's animate section
            overrides.setdefault("animate", {})[".".join(parts[1:])] = yaml.safe_load(value)
            continue
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    if args.test_set:
        overrides["test_set"] = args.test_set
    if args.max_videos:
        overrides["max_videos"] = args.max_videos
    if args.metrics:
        overrides.setdefault("metrics", {})["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    return overrides


def _load(args: argparse.Namespace):
    from animatex_train.eval.recipe import load_recipe

    overrides = _recipe_overrides(args)
    base = yaml.safe_load(Path(args.recipe).read_text()) or {} if args.recipe and Path(args.recipe).is_file() else {}
    for section in ("metrics", "animate"):  # merge nested sections instead of replacing them
        if section in overrides:
            overrides[section] = {**(base.get(section) or {}), **overrides[section]}
    return load_recipe(args.recipe, overrides)


def _settings(args: argparse.Namespace):
    from animatex_train.inference.settings import AnimateSettings, WeightsSettings

    weights = WeightsSettings(
        checkpoint=args.checkpoint,
        weights=args.weights,
        model_config=args.model_config,
        vae=args.vae,
        clip=args.clip,
        dwpose_det=args.dwpose_det,
        dwpose_pose=args.dwpose_pose,
        tiny=args.tiny,
        trust_checkpoint=args.trust_checkpoint,
    )
    settings = AnimateSettings(weights=weights)
    dotted = {"sampling.sampler.num_steps": args.steps, "sampling.seed": args.seed, "sampling.device": args.device}
    return settings.with_overrides({k: v for k, v in dotted.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``animatex-train evaluate``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    weights = WeightPaths(**{key: getattr(args, f"weights_{key}") for key in WEIGHT_FILES})
    try:
        if args.gen_dir or args.gt_dir:
            return _score_folders(args, weights)
        if not args.recipe:
            parser.error("--recipe is required (or --gen_dir/--gt_dir to score frame folders)")
        recipe = _load(args)
        if recipe.test_set is None:
            parser.error("no test set: give --test_set (a .jsonl manifest or a synth folder) or test_set in the recipe")
        from animatex_train.eval.evaluate import init_distributed_from_env, run_evaluation

        init_distributed_from_env()
        report = run_evaluation(recipe, _settings(args), weights, args.output, progress=args.progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"animatex-train evaluate: error: {full_key_paths(str(error), 'evaluate')}", file=sys.stderr)
        return 2
    from animatex_train.eval.evaluate import rank_and_world

    if rank_and_world()[0] == 0:
        print((Path(args.output) / "metrics.md").read_text())
        print(
            f"evaluate: {report['counts']['videos']} videos in {report['seconds']:.0f} s -> {args.output}/metrics.json"
        )
    return 0


def _score_folders(args: argparse.Namespace, weights: WeightPaths) -> int:
    from animatex_train.eval.folders import score_folders
    from animatex_train.eval.metrics.suite import MetricsConfig, MetricSuite
    from animatex_train.eval.report import markdown_table

    if not (args.gen_dir and args.gt_dir):
        raise ValueError("--gen_dir and --gt_dir go together")
    recipe = _load(args) if args.recipe else None
    config = (
        recipe.metrics
        if recipe
        else MetricsConfig(
            metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else list(ALL_METRICS[:7])
        )
    )
    suite = MetricSuite(config, weights)
    score_folders(suite, args.gen_dir, args.gt_dir, progress=args.progress)
    result = suite.compute()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    print(markdown_table([(Path(args.gen_dir).name, result["metrics"])], tuple(result["metrics"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
