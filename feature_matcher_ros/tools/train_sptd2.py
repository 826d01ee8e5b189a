"""fm-train-sptd2: train SPTD2 on random homography/rotation pairs of real photographs and on real pairs
of RGB-D sequences (CPU or GPU).

Pairs are made on the training device (:mod:`..backends.sptd2.batches`): the images live there once and
every warp, crop and photometric change is a batched torch operation, so a GPU is never left waiting.
With ``--teacher DIR`` (heatmaps from ``fm-sptd2-teacher``) a pretrained detector's keypoint heatmaps are
distilled into the level-1 score map beside the paper's losses; the teacher is read from files only.

Resumable: every ``--save-every`` steps and every ``--save-every-min`` minutes it writes
``<out>/checkpoint.pt`` (model, optimiser, step, random states), ``<out>/weights.pt`` (the shippable fp16
weights) and ``<out>/record.json`` (command, images and their SHA-1s, teacher, steps, minutes, losses);
``--resume`` continues from the checkpoint; ``--init WEIGHTS.pt`` starts a new run (fresh optimiser) from shipped
weights instead of a random network, e.g. to fine-tune a GPU run whose full checkpoint did not come back
(the network's config then comes from that file). At the end (steps done or ``--time-limit-min`` reached) the
weights also go to ``--export`` with the JSON record beside them. ``--export-only`` rewrites ``--export``
from ``<out>/checkpoint.pt`` without training.

Example (GPU)::

    fm-train-sptd2 --variant fast --device cuda --batch 64 --crop 256 --time-limit-min 6 \\
        --images .cache/sptd2_train $FM_SHARED/data/tum_fr3_cabinet_rgbd/images \\
        --rgbd $FM_SHARED/data/tum_fr3_cabinet_rgbd --teacher .cache/sptd2_teacher \\
        --out .cache/sptd2_gpu --export feature_matcher_ros/weights/sptd2_fast.pt
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
    p.add_argument("--images", nargs="+", default=[], help="image files or folders (searched recursively)")
    p.add_argument("--rgbd", default=None, help="RGB-D sequence folder (depth + poses) for real pairs")
    p.add_argument("--real-fraction", type=float, default=0.25, help="share of each batch from --rgbd pairs")
    p.add_argument("--teacher", default=None, help="folder of teacher heatmaps (fm-sptd2-teacher) to distil")
    p.add_argument("--distill", type=float, default=1.0, help="weight of the teacher term (with --teacher)")
    p.add_argument("--circle-scale", type=float, default=1.0 / 64.0,
                   help="weight of the circle (description) loss inside lambda * L_des (LossConfig.circle_scale)")
    p.add_argument("--variant", default="small", choices=["small", "full", "fast"], help="network size")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override fields of the variant's SPTD2Config (e.g. dim=128 trunk=vgg width_divisor=4)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps in total")
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--crop", type=int, default=160, help="crop size in pixels (multiple of 16)")
    p.add_argument("--lr", type=float, default=5e-4, help="initial learning rate (Adam)")
    p.add_argument("--lr-end", type=float, default=2.5e-4,
                   help="learning rate at the end (linear in max(step share, share of this run's time limit))")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".cache/sptd2_run", help="folder for the resumable checkpoint")
    p.add_argument("--export", default=None, help="where to write the final fp16 weights (+ .json record)")
    p.add_argument("--export-only", action="store_true", help="write --export from <out>/checkpoint.pt and stop")
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--save-every-min", type=float, default=2.0, help="minutes between checkpoints (0 = off)")
    p.add_argument("--time-limit-min", type=float, default=0.0, help="stop (and save) after this many minutes of this run; 0 = none")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--init", default=None, metavar="WEIGHTS.pt",
                   help="start from these exported weights (their config; new optimiser) instead of a random network")
    p.add_argument("--log-every", type=int, default=20, help="steps between log lines (without a progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    args = p.parse_args(argv)
    if args.crop % 16 or args.crop < 64:
        p.error(f"--crop must be a multiple of 16 and >= 64, got {args.crop}")
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        p.error("--steps, --batch and --threads must be positive")
    if not args.images and not args.rgbd and not args.export_only:
        p.error("give --images and/or --rgbd")
    if not 0.0 <= args.real_fraction <= 1.0:
        p.error("--real-fraction must be in [0, 1]")
    if args.export_only and not args.export:
        p.error("--export-only needs --export")
    if args.init and (args.resume or args.export_only or args.set):
        p.error("--init starts a new run from exported weights: not with --resume, --export-only or --set")
    return args


def file_digest(paths) -> list[dict]:
    out = []
    for path in paths:
        data = Path(path).read_bytes()
        out.append({"path": str(path), "sha1": hashlib.sha1(data).hexdigest()[:16]})
    return out


def write_export(model, export: Path, record: dict) -> None:
    """The shipped format (fp16 :func:`save_checkpoint`) plus ``<export>.json`` with the full record."""
    from ..backends.sptd2.model import save_checkpoint

    export.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, str(export), meta={k: v for k, v in record.items() if k != "loss_history"})
    export.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {export} ({export.stat().st_size / 1e6:.1f} MB) and {export.with_suffix('.json')}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ..backends.sptd2.batches import DepthPairBatcher, HomographyBatcher, concat_batches, split_sizes
    from ..backends.sptd2.config import SPTD2Config
    from ..backends.sptd2.data import PairConfig
    from ..backends.sptd2.losses import LossConfig, sptd2_loss
    from ..backends.sptd2.model import SPTD2, count_parameters, load_checkpoint, save_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("fm-train-sptd2: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # FU's channel affinities are large sums: keep fp32
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    config = SPTD2Config.preset(args.variant)
    if args.set:
        import dataclasses

        types = {f.name: f.type for f in dataclasses.fields(SPTD2Config)}
        changes = {}
        for item in args.set:
            key, _, value = item.partition("=")
            if key not in types:
                print(f"fm-train-sptd2: --set {item}: unknown field (known: {sorted(types)})", file=sys.stderr)
                return 2
            kind = types[key] if isinstance(types[key], str) else types[key].__name__
            changes[key] = value.lower() in ("1", "true", "yes") if kind == "bool" else (
                int(value) if kind == "int" else float(value) if kind == "float" else value)
        config = dataclasses.replace(config, **changes)
    state = None
    if args.resume or args.export_only:
        if not ckpt_path.is_file():
            print(f"fm-train-sptd2: {ckpt_path} does not exist (needed by --resume/--export-only)", file=sys.stderr)
            return 2
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
    record_before = (state or {}).get("record") or {}
    init_record = record_before.get("init")  # a resumed --init run keeps its origin
    if args.init:
        model, init_meta = load_checkpoint(args.init)
        config, args.variant = model.config, init_meta.get("variant") or args.variant
        init_record = {"weights": args.init, "sha1": file_digest([args.init])[0]["sha1"],
                       **{k: init_meta.get(k) for k in ("variant", "steps_done", "batch", "crop", "train_minutes",
                                                        "device_name", "command")}}
    else:
        if init_record and "config" in record_before:  # the network of the weights that run started from
            config = SPTD2Config.from_dict(record_before["config"])
        model = SPTD2(config)
    model = model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    loss_cfg = LossConfig(distill=args.distill if args.teacher else 0.0, circle_scale=args.circle_scale)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    step, elapsed_before, history = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, elapsed_before, history = state["step"], state["elapsed_s"], state["history"]
    if args.export_only:
        write_export(model.eval(), Path(args.export), state.get("record") or {"steps_done": step})
        return 0

    pair_cfg = PairConfig(crop=args.crop)
    batchers = {}
    if args.images:
        batchers["homography"] = HomographyBatcher(args.images, pair_cfg, device, args.teacher, seed=args.seed)
    if args.rgbd:
        batchers["rgbd"] = DepthPairBatcher(args.rgbd, pair_cfg, device, args.teacher, seed=args.seed)
    n_hom, n_real = split_sizes(args.batch, args.real_fraction if "rgbd" in batchers else 0.0)
    if "homography" not in batchers:
        n_hom, n_real = 0, args.batch
    teacher_record = None
    if args.teacher:
        record_file = Path(args.teacher) / "teacher.json"
        teacher_record = json.loads(record_file.read_text()) if record_file.is_file() else {"folder": args.teacher}
    if state is not None:
        for name, batcher in batchers.items():
            if name in state.get("batcher_rng", {}):
                batcher.rng.bit_generator.state = state["batcher_rng"][name]
        if state.get("generator_device") == device.type:  # CPU and CUDA generator states differ
            generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step} ({elapsed_before / 60:.1f} min trained)")
    paths = [p for b in batchers.values() for p in b.paths]
    print(f"SPTD2 {args.variant}: {count_parameters(model) / 1e6:.2f} M parameters, {len(paths)} images "
          f"({n_hom} homography + {n_real} real pairs a step), {args.steps} steps x {args.batch} pairs of "
          f"{args.crop}px on {device}" + (f", teacher {args.teacher}" if args.teacher else ""), flush=True)
    digests = file_digest(sorted(set(map(str, paths))))

    def record() -> dict:
        return {
            "command": "fm-train-sptd2 " + " ".join(argv if argv is not None else sys.argv[1:]),
            "variant": args.variant, "config": config.to_dict(), "steps_done": step, "steps_planned": args.steps,
            "batch": args.batch, "pairs_per_step": {"homography": n_hom, "rgbd": n_real}, "crop": args.crop,
            "lr": [args.lr, args.lr_end], "optimiser": "Adam(0.9, 0.999)",
            "loss": {"r": loss_cfg.r, "lambda": loss_cfg.lam, "circle_margin": loss_cfg.margin,
                     "circle_gamma": loss_cfg.gamma, "circle_scale": loss_cfg.circle_scale,
                     "patch_px": loss_cfg.patch_px, "distill": loss_cfg.distill},
            "teacher": teacher_record, "rgbd": args.rgbd, "init": init_record,
            "pairs": vars(pair_cfg), "train_minutes": round((elapsed_before + time.time() - start) / 60, 2),
            "threads": args.threads, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": str(torch.__version__), "machine": platform.machine(),
            "images": digests, "loss_history": history[-200:],
        }

    def save() -> None:
        rec = record()
        blob = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                "elapsed_s": elapsed_before + time.time() - start, "history": history,
                "batcher_rng": {k: b.rng.bit_generator.state for k, b in batchers.items()},
                "generator": generator.get_state(), "generator_device": device.type, "torch_rng": torch.get_rng_state(), "record": rec}
        torch.save(blob, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        save_checkpoint(model, str(out / "weights.pt"), meta={k: v for k, v in rec.items() if k != "loss_history"})
        (out / "record.json").write_text(json.dumps(rec, indent=1))

    try:
        from tqdm import tqdm
    except ImportError:  # a bare training machine: log lines only
        tqdm = None
    start = time.time()
    last_save = start
    progress = args.no_progress or tqdm is None
    bar = None if progress else tqdm(total=args.steps, initial=step, dynamic_ncols=True)
    running = None
    limit_s = args.time_limit_min * 60
    while step < args.steps:
        share = max(step / max(1, args.steps - 1), (time.time() - start) / limit_s if limit_s else 0.0)
        for group in optimiser.param_groups:
            group["lr"] = args.lr + (args.lr_end - args.lr) * min(1.0, share)
        parts_list = []
        if n_hom:
            parts_list.append(batchers["homography"].batch(n_hom))
        if n_real:
            parts_list.append(batchers["rgbd"].batch(n_real))
        batch = concat_batches(parts_list)
        b = args.batch
        out_all = model(torch.cat([batch["image0"], batch["image1"]]))
        out0 = {k: [v[:b] for v in out_all[k]] for k in out_all}
        out1 = {k: [v[b:] for v in out_all[k]] for k in out_all}
        loss, parts = sptd2_loss(out0, out1, batch["flow"], batch["valid"], loss_cfg, generator,
                                 batch["teacher0"], batch["teacher1"])
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
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running['total']:.2f}", desc=f"{running['desc']:.2f}",
                            peaky=f"{running['peaky']:.3f}", cos=f"{running['cosim']:.3f}")
        elif step % args.log_every == 0:
            print(f"step {step} {time.time() - start:.0f}s " + " ".join(f"{k}={v:.3f}" for k, v in running.items()),
                  flush=True)
        timed_out = limit_s > 0 and time.time() - start >= limit_s  # this run's minutes
        due = args.save_every_min > 0 and time.time() - last_save >= args.save_every_min * 60
        if step % args.save_every == 0 or step == args.steps or timed_out or due:
            save()
            last_save = time.time()
        if timed_out:
            print(f"time limit of {args.time_limit_min} min reached at step {step}")
            break
    if bar is not None:
        bar.close()
    save()
    if args.export:
        write_export(model.eval(), Path(args.export), record())
    return 0


if __name__ == "__main__":
    sys.exit(main())
