"""Run an exported pipeline folder (`vpae export`) with diffusers alone, its transformer under diffusers' own
context parallelism across the processes of torchrun: the way to sample long videos (720p: 75,600 tokens) from
the distilled generator on N GPUs without vpae.

    torchrun --standalone --nproc_per_node 8 scripts/pipeline_cp.py --pipeline runs/i2v_14b_720p/pipeline \
        --image first_frame.png --prompt "a cat surfing" --height 720 --width 1280 --frames 81 --out outputs/cp

One process (plain `python scripts/pipeline_cp.py ...`) runs the same pipeline without parallelism. Every rank
runs the pipeline with the same seed; the transformer splits each sample's token sequence over the ranks
(`ContextParallelConfig(ulysses_degree=N)`, or `--ring` for ring attention) and gathers its output, so every rank
holds the whole result and rank 0 writes it: `video.mp4` (or with `--latents`, `latents.safetensors`, the
sampler's final latents, which tests/test_paper_scale.py compares with one process's).
`--prompt-embeds FILE` (safetensors with 'text' (L, D)) replaces --prompt for pipelines saved without their text
encoder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", type=Path, required=True, help="a pipeline folder written by `vpae export`")
    p.add_argument("--image", type=Path, help="condition image (image-to-video pipelines)")
    p.add_argument("--prompt", default=None)
    p.add_argument("--prompt-embeds", type=Path, default=None)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--steps", type=int, default=1, help="1: the one-step generator's sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--ring", action="store_true", help="ring attention instead of Ulysses")
    p.add_argument("--latents", action="store_true", help="write the final latents instead of a video")
    p.add_argument("--out", type=Path, default=Path("outputs/pipeline_cp"))
    args = p.parse_args(argv)

    import torch.distributed as dist
    from diffusers import ContextParallelConfig, DiffusionPipeline
    from diffusers.utils import export_to_video, load_image

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(device)
    rank = dist.get_rank() if world > 1 else 0
    extra = {} if args.prompt is not None else {"text_encoder": None, "tokenizer": None}
    pipe = DiffusionPipeline.from_pretrained(str(args.pipeline), torch_dtype=torch.bfloat16 if cuda else torch.float32,
                                             **extra).to(device)
    pipe.set_progress_bar_config(disable=rank != 0)
    if world > 1:
        degree = {"ring_degree": world} if args.ring else {"ulysses_degree": world}
        count = torch.accelerator.device_count
        if not cuda:  # diffusers picks a device as rank % device_count(), 0 on a CPU-only machine
            torch.accelerator.device_count = lambda: 1
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(**degree))
        torch.accelerator.device_count = count
    kw = dict(height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
              guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(args.seed),
              output_type="latent" if args.latents else "np")
    if args.prompt is not None:
        kw["prompt"] = args.prompt
    else:
        from safetensors.torch import load_file

        from vpae.backbones.wan import WAN_TEXT_LEN, pad_text
        text = load_file(str(args.prompt_embeds))["text"]
        kw["prompt_embeds"] = pad_text(text[None] if text.ndim == 2 else text, WAN_TEXT_LEN).to(device, pipe.dtype)
    if args.image is not None:
        kw["image"] = load_image(str(args.image))
    with torch.no_grad():
        frames = pipe(**kw).frames
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.latents:
            from safetensors.torch import save_file
            save_file({"latents": frames.float().cpu().contiguous()}, str(args.out / "latents.safetensors"))
        else:
            export_to_video(frames[0], str(args.out / "video.mp4"), fps=args.fps)
        print(f"wrote {args.out}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
