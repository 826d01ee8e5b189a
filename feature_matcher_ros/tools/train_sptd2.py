"""fm-train-sptd2: train SPTD2 on random homography/rotation pairs of real photographs (CPU or GPU).

Resumable: every ``--save-every`` steps it writes ``<out>/checkpoint.pt`` (model, optimiser, step,
random states) and ``<out>/weights.pt`` (the shippable fp16 weights); ``--resume`` continues from the
checkpoint. At the end (steps done or ``--time-limit-min`` reached) the weights go to ``--export`` with a
JSON record of the command, data, steps and time beside them.

Example (the shipped ``sptd2_small.pt``)::

    fm-train-sptd2 --images .cache/sptd2_train /work/shared/data/tum_fr2_desk/images \\
        --variant small --steps 3000 --batch 4 --crop 160 --threads 1 --time-limit-min 45 \\
        --out .cache/sptd2_run --export feature_matcher_ros/weights/sptd2_small.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fm-train-sptd2", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", nargs="+", required=True, help="image files or folders (searched recursively)")
    p.add_argument("--variant", default="small", choices=["small", "full"], help="network size")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps in total")
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--crop", type=int, default=160, help="crop size in pixels (multiple of 16)")
    p.add_argument("--lr", type=float, default=5e-4, help="initial learning rate (Adam)")
    p.add_argument("--lr-end", type=float, default=2.5e-4, help="learning rate at the last step (linear decay)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".cache/sptd2_run", help="folder for the resumable checkpoint")
    p.add_argument("--export", default=None, help="where to write the final fp16 weights (+ .json record)")
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--time-limit-min", type=float, default=0.0, help="stop (and save) after this many minutes; 0 = none")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    args = p.parse_args(argv)
    if args.crop % 16 or args.crop < 64:
        p.error(f"--crop must be a multiple of 16 and >= 64, got {args.crop}")
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        p.error("--steps, --batch and --threads must be positive")
    return args


def file_digest(paths) -> list[dict]:
    out = []
    for path in paths:
        data = Path(path).read_bytes()
        out.append({"path": str(path), "sha1": hashlib.sha1(data).hexdigest()[:16]})
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..backends.sptd2.config import SPTD2Config
    from ..backends.sptd2.data import PairConfig, PairSampler, collate
    from ..backends.sptd2.losses import LossConfig, sptd2_loss
    from ..backends.sptd2.model import SPTD2, count_parameters, save_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    config = SPTD2Config.preset(args.variant)
    model = SPTD2(config).to(args.device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    sampler = PairSampler(args.images, PairConfig(crop=args.crop), seed=args.seed)
    loss_cfg = LossConfig()
    generator = torch.Generator().manual_seed(args.seed)
    step, elapsed_before, history = 0, 0.0, []
    if args.resume:
        if not ckpt_path.is_file():
            print(f"fm-train-sptd2: --resume given but {ckpt_path} does not exist", file=sys.stderr)
            return 2
        state = torch.load(ckpt_path, map_location=args.device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, elapsed_before, history = state["step"], state["elapsed_s"], state["history"]
        sampler.rng.bit_generator.state = state["sampler_rng"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step} ({elapsed_before / 60:.1f} min trained)")
    print(f"SPTD2 {args.variant}: {count_parameters(model) / 1e6:.2f} M parameters, {len(sampler.paths)} images, "
          f"{args.steps} steps x {args.batch} pairs of {args.crop}px")

    def record() -> dict:
        return {
            "command": "fm-train-sptd2 " + " ".join(argv if argv is not None else sys.argv[1:]),
            "variant": args.variant, "config": config.to_dict(), "steps_done": step, "steps_planned": args.steps,
            "batch": args.batch, "crop": args.crop, "lr": [args.lr, args.lr_end], "optimiser": "Adam(0.9, 0.999)",
            "loss": {"r": loss_cfg.r, "lambda": loss_cfg.lam, "circle_margin": loss_cfg.margin,
                     "circle_gamma": loss_cfg.gamma, "circle_scale": loss_cfg.circle_scale,
                     "patch_px": loss_cfg.patch_px},
            "pairs": vars(sampler.cfg), "train_minutes": round((elapsed_before + time.time() - start) / 60, 2),
            "threads": args.threads, "device": args.device, "torch": str(torch.__version__), "machine": platform.machine(),
            "images": file_digest(sampler.paths), "loss_history": history[-200:],
        }

    def save() -> None:
        state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                 "elapsed_s": elapsed_before + time.time() - start, "history": history,
                 "sampler_rng": sampler.rng.bit_generator.state, "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        torch.save(state, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        save_checkpoint(model, str(out / "weights.pt"), meta=record())

    start = time.time()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, dynamic_ncols=True)
    running = None
    while step < args.steps:
        lr = args.lr + (args.lr_end - args.lr) * step / max(1, args.steps - 1)
        for group in optimiser.param_groups:
            group["lr"] = lr
        batch = collate(sampler.batch(args.batch), args.device)
        images = torch.cat([batch["image0"], batch["image1"]])
        out_all = model(images)
        b = args.batch
        out0 = {k: [v[:b] for v in out_all[k]] for k in out_all}
        out1 = {k: [v[b:] for v in out_all[k]] for k in out_all}
        loss, parts = sptd2_loss(out0, out1, batch["flow"], batch["valid"], loss_cfg, generator)
        if not torch.isfinite(loss):
            print(f"step {step}: non-finite loss {parts}, batch skipped", file=sys.stderr)
            optimiser.zero_grad(set_to_none=True)
            continue
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        step += 1
        running = parts if running is None else {k: 0.95 * running[k] + 0.05 * parts[k] for k in parts}
        history.append({"step": step, **{k: round(v, 4) for k, v in parts.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{running['total']:.2f}", desc=f"{running['desc']:.2f}", peaky=f"{running['peaky']:.3f}",
                        cos=f"{running['cosim']:.3f}")
        if args.no_progress and step % 20 == 0:
            print(f"step {step} {time.time() - start:.0f}s " + " ".join(f"{k}={v:.3f}" for k, v in running.items()), flush=True)
        timed_out = args.time_limit_min > 0 and (time.time() - start) / 60 >= args.time_limit_min
        if step % args.save_every == 0 or step == args.steps or timed_out:
            save()
        if timed_out:
            print(f"time limit of {args.time_limit_min} min reached at step {step}")
            break
    bar.close()
    save()
    if args.export:
        export = Path(args.export)
        export.parent.mkdir(parents=True, exist_ok=True)
        meta = record()
        save_checkpoint(model, str(export), meta={k: v for k, v in meta.items() if k != "loss_history"})
        export.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        print(f"wrote {export} ({export.stat().st_size / 1e6:.1f} MB) and {export.with_suffix('.json')}")
    del np
    return 0


if __name__ == "__main__":
    sys.exit(main())
