"""``animatex-train animate``: the command line of ``inference.animate``.

Examples::

    # the released model, the fixes on (DWPose built in, reference fit, audio, meta.json)
    animatex-train animate --ref char.png --video dance.mp4 -o out.mp4 \\
        --checkpoint animate-x.pth --vae v2-1_512-ema-pruned.ckpt --clip open_clip_pytorch_model.bin \\
        --dwpose_det yolox_l.onnx --dwpose_pose dw-ll_ucoco_384.onnx
    # the official pipeline exactly (stretch to 768x512, 8 fps, two batch-1 forwards)
    animatex-train animate ... --mode official --stride 2
    # a whole video through windows, landscape, aligned poses
    animatex-train animate ... --frames all --window 32 --overlap 8 --size 512x768 --align unianimate
    # many jobs over 8 GPUs (each job once; rerun to finish what is left)
    torchrun --nproc_per_node 8 -m animatex_train.cli.animate --manifest jobs.jsonl -o out/ ...
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from animatex_train.cli.arguments import CommandParser, add_generation_weight_flags
from animatex_train.cli.errors import full_key_paths
from animatex_train.diffusion.sampling import FINAL_ALPHAS, TIMESTEP_SPACINGS, SamplerConfig
from animatex_train.inference import settings as S

# flag dest -> dotted settings key (also the per-job keys a manifest line may use).
ALIASES: dict[str, str] = {
    "checkpoint": "weights.checkpoint",
    "weights": "weights.weights",
    "model_config": "weights.model_config",
    "vae": "weights.vae",
    "clip": "weights.clip",
    "dwpose_det": "weights.dwpose_det",
    "dwpose_pose": "weights.dwpose_pose",
    "tiny": "weights.tiny",
    "trust_checkpoint": "weights.trust_checkpoint",
    "size": "inputs.size",
    "ref_fit": "inputs.ref_fit",
    "bg": "inputs.bg",
    "stride": "inputs.stride",
    "target_fps": "inputs.target_fps",
    "start": "inputs.start",
    "frames": "inputs.frames",
    "pkl": "inputs.pkl",
    "source_fps": "inputs.source_fps",
    "pose_dir": "inputs.pose_dir",
    "ref_keypoints": "inputs.ref_keypoints_file",
    "ref_kp": "inputs.ref_keypoints",
    "align": "inputs.align",
    "align_frame": "inputs.align_frame",
    "pose_scale": "inputs.pose_scale",
    "pose_offset": "inputs.pose_offset",
    "cache_dir": "inputs.cache_dir",
    "steps": "sampling.sampler.num_steps",
    "guidance": "sampling.sampler.guidance_scale",
    "eta": "sampling.sampler.eta",
    "timestep_spacing": "sampling.sampler.timestep_spacing",
    "final_alpha": "sampling.sampler.final_alpha",
    "guidance_rescale": "sampling.sampler.guidance_rescale",
    "seed": "sampling.seed",
    "ref_mode": "sampling.ref_mode",
    "window": "sampling.window",
    "overlap": "sampling.overlap",
    "fusion": "sampling.fusion",
    "noise_prior": "sampling.noise_prior",
    "window_tail": "sampling.window_tail",
    "window_batch": "sampling.window_batch",
    "precision": "sampling.precision",
    "device": "sampling.device",
    "offload": "sampling.offload",
    "decode_chunk": "sampling.decode_chunk",
    "cfg_batch": "sampling.cfg_batch",
    "attention": "sampling.attention",
    "fps": "output.fps",
    "audio": "output.audio",
    "layout": "output.layout",
    "save_poses": "output.save_poses",
    "save_frames": "output.save_frames",
    "align_preview": "output.align_preview",
    "progress": "output.progress",
}


def _size(text: str) -> tuple[int, int] | None:
    if text == "auto":
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH (e.g. 768x512) or auto, got {text!r}") from error
    return height, width


def _frames(text: str) -> int | None:
    return None if text == "all" else int(text)


def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected two numbers A,B, got {text!r}") from error
    return a, b


def _rgb(text: str) -> tuple[int, int, int]:
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "green": (0, 255, 0)}
    if text in named:
        return named[text]
    try:
        r, g, b = (int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected R,G,B or white|black|gray|green, got {text!r}") from error
    return r, g, b


def build_parser() -> CommandParser:
    d_in, d_s, d_out, d_smp = S.InputSettings(), S.SamplingSettings(), S.OutputSettings(), SamplerConfig()
    p = CommandParser(
        "animate",
        "Animate a character image with the motion of a driving video (Animate-X).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("inputs and output")
    io.add_argument("--ref", help="reference character image (one job; or use --manifest)")
    io.add_argument("--video", help="driving video, or the official saved_frames/<video> folder (with --pkl)")
    io.add_argument("-o", "--output", required=True, help="output .mp4 (a folder with --manifest)")
    io.add_argument("--manifest", help="jobs.jsonl: one {ref, video, seed?, id?, <flag>: value...} per line")
    io.add_argument("--mode", choices=S.MODES, default="default", help="official = the released pipeline exactly")
    w = p.add_argument_group("weights (local files; nothing is downloaded)")
    add_generation_weight_flags(w)
    i = p.add_argument_group("input handling")
    i.add_argument(
        "--size",
        type=_size,
        default=None,
        help="HEIGHTxWIDTH, multiples of 64, or auto (768x512; 512x768 for a landscape reference)",
    )
    i.add_argument("--ref_fit", choices=S.REF_FITS, default=d_in.ref_fit, help="stretch is the official")
    i.add_argument("--bg", type=_rgb, default=d_in.bg, help="background under transparency and padding")
    i.add_argument("--stride", type=int, help="take every N-th source frame (default 1)")
    i.add_argument("--target_fps", type=float, help="choose the stride from this output rate")
    i.add_argument("--start", type=float, default=d_in.start, help="seconds to skip")
    i.add_argument("--frames", type=_frames, default=d_in.frames, help="frames to generate, or all")
    i.add_argument("--pkl", help="official saved_pkl/<video>.pkl keypoints instead of DWPose")
    i.add_argument("--source_fps", type=float, help="frame rate of a frames folder (default: the pkl's fps)")
    i.add_argument("--pose_dir", help="official saved_pose/<video> pose images")
    i.add_argument("--ref_keypoints", help="reference keypoints (.npy normalised, or the official _ref_pose.pkl)")
    i.add_argument(
        "--ref_kp",
        choices=S.REF_KEYPOINTS,
        default=d_in.ref_keypoints,
        help="IPI frame 0: the reference's DWPose (auto) or the driving frame 0 (released)",
    )
    i.add_argument("--align", choices=S.ALIGN_MODES, default=d_in.align, help="driving-pose alignment")
    i.add_argument("--align_frame", type=int, default=d_in.align_frame, help="frame the alignment is estimated on")
    i.add_argument("--pose_scale", type=_pair, help="manual SX,SY after alignment")
    i.add_argument("--pose_offset", type=_pair, help="manual DX,DY (normalised) after alignment")
    i.add_argument("--align_preview", help="write the alignment preview PNG here")
    i.add_argument(
        "--dry_run_align",
        action="store_true",
        help="write the alignment preview (<out>.align.png unless --align_preview) and stop",
    )
    i.add_argument("--cache_dir", default=str(Path("~/.cache/animatex/poses")), help="DWPose cache ('' = none)")
    s = p.add_argument_group("sampling, long videos, speed and memory")
    s.add_argument("--steps", type=int, default=d_smp.num_steps, help="DDIM steps (31 evaluations for 30)")
    s.add_argument("--guidance", type=float, default=d_smp.guidance_scale, help="CFG scale; 1 skips the uncond pass")
    s.add_argument("--eta", type=float, default=d_smp.eta, help="DDIM eta in [0, 1]")
    s.add_argument("--timestep_spacing", choices=TIMESTEP_SPACINGS, default=d_smp.timestep_spacing)
    s.add_argument("--final_alpha", choices=FINAL_ALPHAS, default=d_smp.final_alpha)
    s.add_argument("--guidance_rescale", type=float, default=d_smp.guidance_rescale, help="Lin et al. phi")
    s.add_argument("--seed", type=int, default=d_s.seed)
    s.add_argument("--ref_mode", choices=S.REF_MODES, default=d_s.ref_mode, help="local_image is the released")
    s.add_argument("--window", type=int, help="frames per window (e.g. 32); unset = one pass")
    s.add_argument("--overlap", type=int, default=d_s.overlap, help="frames shared by neighbouring windows")
    s.add_argument("--fusion", choices=S.FUSIONS, default=d_s.fusion, help="how overlapping windows average")
    s.add_argument(
        "--window_tail",
        choices=S.WINDOW_TAILS,
        default=d_s.window_tail,
        help="last window snapped to the end (UniAnimate) or padded with the last frame (MusePose)",
    )
    s.add_argument("--window_batch", type=int, default=d_s.window_batch, help="windows per denoiser call")
    s.add_argument("--noise_prior", type=int, help="UniAnimate's tau (939): leak the reference into x_T")
    s.add_argument("--precision", choices=S.PRECISIONS, help="default: bf16 on CUDA (official: fp16), fp32 on CPU")
    s.add_argument("--device", help="cuda, cuda:N or cpu (default: the local rank's GPU)")
    s.add_argument("--no_offload", dest="offload", action="store_false", help="keep CLIP/VAE on the device")
    s.add_argument("--decode_chunk", type=int, default=d_s.decode_chunk, help="frames per VAE decode call")
    s.add_argument("--cfg_batch", choices=S.CFG_BATCH, default=d_s.cfg_batch, help="both CFG branches in one batch")
    s.add_argument("--attention", default=d_s.attention, help="auto, sdpa, sdpa_flash, flash_attn, math")
    o = p.add_argument_group("outputs")
    o.add_argument("--fps", type=float, help="output fps (default source fps / stride; official 8)")
    o.add_argument("--no_audio", dest="audio", action="store_false", help="do not mux the driving audio")
    o.add_argument("--layout", choices=S.LAYOUTS, default=d_out.layout)
    o.add_argument("--save_poses", action="store_true", help="also <out>.poses.mp4 and <out>.keypoints.npy")
    o.add_argument("--save_frames", action="store_true", help="also <out>.frames/*.png")
    o.add_argument("--no_progress", dest="progress", action="store_false")
    return p


def settings_from_args(args: argparse.Namespace) -> S.AnimateSettings:
    """The flags as ``AnimateSettings`` (checked; errors name the flag)."""
    base = S.AnimateSettings(mode=args.mode, weights=S.WeightsSettings(tiny=True))
    data = base.to_dict()
    for dest, dotted in ALIASES.items():
        value = getattr(args, dest)
        if dest == "cache_dir" and value == "":
            value = None
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return S.settings_from_dict(data)


def _as_flags(message: str) -> str:
    """Sampler keys in ``message`` (``sampler.num_steps``) as the flags that set them (``--steps``)."""
    flags = {dotted: f"--{dest}" for dest, dotted in ALIASES.items()}
    message = full_key_paths(message, "animate")
    return re.sub(r"(?<![\w.-])sampling\.sampler\.\w+", lambda m: flags.get(m.group(0), m.group(0)), message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``animatex-train animate`` (see the module doc)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.manifest is None and (args.ref is None or args.video is None):
        parser.error("--ref and --video are required (or --manifest jobs.jsonl)")
    try:
        settings = settings_from_args(args)
        if args.manifest:
            from animatex_train.inference.batch import read_manifest, run_manifest

            jobs = read_manifest(args.manifest, args.output, ALIASES)
            summary = run_manifest(jobs, settings, args.output)
            print(
                f"animate: {len(summary['done'])} rendered, {len(summary['skipped'])} already complete, "
                f"{len(summary['failed'])} failed" + (f" ({', '.join(summary['failed'])})" if summary["failed"] else "")
            )
            return 1 if summary["failed"] else 0
        from animatex_train.inference.pipeline import animate, preview_alignment_only

        if args.dry_run_align:
            path = args.align_preview or str(Path(args.output).with_suffix(".align.png"))
            clip = preview_alignment_only(args.ref, args.video, settings, path)
            for message in clip.warnings:
                print(f"warning: {message}", file=sys.stderr)
            print(f"animate: alignment preview ({clip.notes['alignment'].get('mode')}) -> {path}")
            return 0
        result = animate(args.ref, args.video, settings, output=args.output)
    except (ValueError, FileNotFoundError) as error:
        print(f"animatex-train animate: error: {_as_flags(str(error))}", file=sys.stderr)
        return 2
    for message in result.meta["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    print(
        f"animate: {result.plan.num_frames} frames at {float(result.fps):g} fps ({result.plan.duration:.2f} s) -> "
        f"{result.output} (+ {Path(result.output).stem}.meta.json)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
