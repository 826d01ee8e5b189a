"""``fm-tune BAG [BAG ...] --out DIR``: tune the node's parameters on recorded bags with Optuna, trials on Ray.

Each trial is an ordinary ``fm-eval`` run per bag (the same code and metrics) with the base parameter file
(``--params``, default the shipped config/matcher.yaml) and the trial's values of the search space (``--space``
YAML, default the backend's curated space, :mod:`..evaluation.tuning`). The objective is the mean over bags of
one metric of ``metrics.json``. The study (TPE, seeded) lives in ``DIR/study.db`` or ``--storage URL``: stop it
and run the same command again to go on, or share it between machines through a database. The node's defaults
are the study's first trial. Writes ``DIR/best.yaml`` (a ROS parameter file), ``DIR/report.md`` and plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation import fleet, tuning
from ..evaluation.cli import UsageError, run_main
from ..evaluation.offline import default_params_file, load_params_file
from ..evaluation.report import write_json
from .eval import add_bag_input_args, add_fleet_args, evaluate_job, plan_fleet, pool_options

#: metrics kept per trial (means over bags) for the report and the constraints
KEPT = fleet.TOTAL_KEYS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bag", nargs="*", help="bags (or folders of bags) to tune on")
    p.add_argument("--out", required=True, help="output folder: the study, every trial's runs, best.yaml, report")
    p.add_argument("--space", default=None, metavar="SPACE.yaml",
                   help="search space (parameter: {low, high, log} or {choices}); default: the backend's")
    p.add_argument("--objective", default="auc@10", help="metrics.json key, averaged over the bags")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                   help="default: minimize errors and times, maximize the rest")
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="e.g. 'fps>=10' (repeatable); timing ones are checked on the best trials re-run alone")
    p.add_argument("--trials", type=int, default=40, help="finished trials the study should hold")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="base parameter file (default: the shipped config/matcher.yaml)")
    p.add_argument("--backend", default=None, help="backend (default: the base file's)")
    p.add_argument("--node-name", default="matcher_node", help="node name whose section of a parameter file applies")
    p.add_argument("--device", default=None, help="override the device (cpu, cuda, cuda:N, auto)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///DIR/study.db)")
    p.add_argument("--study-name", default="fm-tune", help="study name in the storage")
    p.add_argument("--recheck", type=int, default=10,
                   help="at most this many of the best trials re-run one at a time to check timing constraints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_bag_input_args(p)
    add_fleet_args(p)
    p.set_defaults(pose_graph=False, pictures=0)
    return p


@dataclass
class Setup:
    """What every trial shares."""

    args: argparse.Namespace
    base: dict[str, Any]
    base_file: str | None
    backend: str
    space: list[tuning.Dimension]
    direction: str
    constraints: list[tuning.Constraint]
    threads: int


@dataclass
class TrialRuns:
    """A trial in flight: its runs, and the rows that came back."""

    trial: Any
    folder: Path
    jobs: list[fleet.Job]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.rows) == len(self.jobs)


def make_setup(args: argparse.Namespace) -> Setup:
    if args.trials < 1 or args.recheck < 0:
        raise UsageError("--trials must be >= 1 and --recheck >= 0")
    if not args.bag and not args.manifest:
        raise UsageError("give the bags to tune on (or --manifest)")
    if args.manifest and any(e.params for e in fleet.read_manifest(args.manifest)):
        raise UsageError("fm-tune: manifest entries cannot name parameter files (the trials set them)")
    base_file = args.params or (str(default_params_file()) if default_params_file() else None)
    base = load_params_file(base_file, args.node_name) if base_file else {}
    backend = str(args.backend or base.get("backend") or "sift")
    space = tuning.load_space(args.space, backend, str(base.get("input_mode", "mono")))
    return Setup(args, base, base_file, backend, space, args.direction or tuning.direction(args.objective),
                 [tuning.Constraint.parse(c) for c in args.constraint], pool_options(args)["threads"])


def trial_params(setup: Setup, values: dict[str, Any]) -> dict[str, Any]:
    """The full parameter set of a trial: the base file, the backend, the trial's values."""
    return {**setup.base, "backend": setup.backend, **values}


def write_trial(setup: Setup, values: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """The trial's folder (named by its values, so a trial run again reuses the finished runs) and its
    parameter file."""
    key = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "params.yaml"
    file.write_text(tuning.params_yaml(trial_params(setup, values), [f"fm-tune trial values: {values}"]))
    return folder, file


def plan_trial(setup: Setup, values: dict[str, Any], root: Path, threads: int,
               extra: Any = None) -> tuple[Path, list[fleet.Job]]:
    folder, file = write_trial(setup, values, root)
    ns = argparse.Namespace(**{**vars(setup.args), "params": [str(file)], "backend": [], "out": str(folder)})
    return folder, plan_fleet(ns, threads, extra=extra)


def trial_result(setup: Setup, runs: TrialRuns) -> tuple[float | None, dict[str, Any]]:
    """The objective (mean over bags) and what the report keeps of the trial."""
    rows = [runs.rows[job.name] for job in runs.jobs]
    failed = [r for r in rows if "error" in r]
    attrs = {"folder": runs.folder.as_posix(),
             "bags": {r["bag_label"]: r.get(setup.args.objective) for r in rows if "error" not in r},
             "means": {k: tuning.mean_over_bags(rows, k) for k in KEPT}}
    if failed:
        attrs["why"] = f"{failed[0]['bag_label']}: {failed[0]['error']}"
    value = tuning.mean_over_bags(rows, setup.args.objective)
    if value is None and not failed:
        attrs["why"] = f"no {setup.args.objective} on every bag"
    return value, attrs


def open_study(setup: Setup) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    out = Path(setup.args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = setup.args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.create_study(study_name=setup.args.study_name, storage=storage, direction=setup.direction,
                                load_if_exists=True)
    want = {"objective": setup.args.objective, "backend": setup.backend,
            "space": [d.describe() for d in setup.space]}
    have = {k: study.user_attrs.get(k) for k in want}
    if study.trials and have != want:
        raise UsageError(f"study {setup.args.study_name!r} in {storage} was made for {have}, not {want}: "
                         "use another --out, --storage or --study-name")
    for key, value in want.items():
        study.set_user_attr(key, value)
    # a resumed study must not draw again what the first invocation drew: the seed moves on with the trials
    study.sampler = optuna.samplers.TPESampler(seed=setup.args.seed + len(study.trials), multivariate=True)
    requeue_stale(study)
    if not any(t.user_attrs.get("defaults") for t in study.trials):
        study.enqueue_trial(default_values(setup), user_attrs={"defaults": True})
    return study


def default_values(setup: Setup) -> dict[str, Any]:
    """The node's values of the tuned parameters (the base file's, else the declared defaults)."""
    specs = tuning.tunable_specs(setup.backend)
    return {d.name: specs[d.name].coerce(setup.base.get(d.name, specs[d.name].default)) for d in setup.space}


def requeue_stale(study: Any) -> None:
    """Trials left running by an fm-tune of this machine that is gone (stopped, killed): failed, and their
    values queued again (their finished runs are reused)."""
    import optuna

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner_host, _, pid = str(t.user_attrs.get("owner", "")).partition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items() if k == "defaults"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def finished_trials(study: Any) -> int:
    """Trials that ran to the end: complete, or failed by their runs (not the stale ones queued again)."""
    import optuna

    state = optuna.trial.TrialState
    return sum(t.state == state.COMPLETE or (t.state == state.FAIL and "why" in t.user_attrs)
               for t in study.get_trials(deepcopy=False))


def start_trial(setup: Setup, study: Any) -> TrialRuns:
    """Ask the study for a trial, plan its runs (the finished ones from an earlier invocation filled in)."""
    trial = study.ask()
    trial.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")
    values = {d.name: d.suggest(trial) for d in setup.space}
    folder, jobs = plan_trial(setup, values, Path(setup.args.out) / "trials", setup.threads)
    runs = TrialRuns(trial, folder, jobs)
    for job in jobs:
        metrics = fleet.finished(job)
        if metrics is not None:
            runs.rows[job.name] = {**metrics, "bag_label": job.label}
    return runs


def end_trial(setup: Setup, study: Any, runs: TrialRuns) -> None:
    import optuna

    value, attrs = trial_result(setup, runs)
    for key, item in attrs.items():
        runs.trial.set_user_attr(key, item)
    if value is None:
        study.tell(runs.trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(runs.trial, value)


def run_study(setup: Setup, study: Any) -> None:
    """Trials until the study holds ``--trials`` finished ones, their runs ``--workers`` at a time on Ray."""
    todo = setup.args.trials - finished_trials(study)
    if todo <= 0:
        return
    bar = None
    if not setup.args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=setup.args.trials, initial=setup.args.trials - todo, desc="fm-tune", unit="trial")
    pool_args = pool_options(setup.args)
    inflight: list[TrialRuns] = []
    queue: list[tuple[TrialRuns, fleet.Job]] = []
    started = 0
    try:
        with fleet.RayPool(**pool_args) as pool:
            while started < todo or inflight:
                while pool.free > 0 and (queue or started < todo):
                    if not queue:
                        runs = start_trial(setup, study)
                        started += 1
                        inflight.append(runs)
                        queue += [(runs, j) for j in runs.jobs if j.name not in runs.rows]
                        continue
                    runs, job = queue.pop(0)
                    pool.submit(evaluate_job, job)
                for job, row in pool.finished_tasks():
                    owner = next(r for r in inflight if job in r.jobs)
                    owner.rows[job.name] = row
                for runs in [r for r in inflight if r.complete]:
                    end_trial(setup, study, runs)
                    inflight.remove(runs)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()


# -- after the study -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    best: Any                        # FrozenTrial or None
    defaults: Any                    # FrozenTrial of the node's defaults, or None
    ranked: list[Any]                # complete trials, best first
    rechecked: dict[int, dict[str, float | None]]   # trial number -> timing metric -> mean, re-run alone
    recheck_threads: int


def rank(setup: Setup, study: Any) -> list[Any]:
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: -t.value if setup.direction == "maximize" else t.value)


def choose_best(setup: Setup, study: Any) -> Outcome:
    """The best trial that meets every constraint: non-timing ones on the study's results; timing ones on
    re-runs one at a time with all the cores, of the defaults and of the best trials in order until one meets
    them (at most ``--recheck``)."""
    ranked = rank(setup, study)
    defaults = next((t for t in ranked if t.user_attrs.get("defaults")), None)
    plain = [c for c in setup.constraints if not c.timing]
    timing = [c for c in setup.constraints if c.timing]
    ok = [t for t in ranked if all(c.holds(t.user_attrs.get("means", {}).get(c.metric)) for c in plain)]
    threads = fleet.thread_budget(1, setup.args.threads)
    rechecked: dict[int, dict[str, float | None]] = {}
    if timing:
        metrics = {c.metric for c in timing}
        for t in ([defaults] if defaults is not None else []) + ok[:setup.args.recheck]:
            if t.number not in rechecked:
                rechecked[t.number] = recheck(setup, t, metrics, threads)
            if t is not defaults and all(c.holds(rechecked[t.number][c.metric]) for c in timing):
                break
        ok = [t for t in ok if t.number in rechecked and all(c.holds(rechecked[t.number][c.metric])
                                                             for c in timing)]
    return Outcome(ok[0] if ok else None, defaults, ranked, rechecked, threads)


def recheck(setup: Setup, trial: Any, metrics: set[str], threads: int) -> dict[str, float | None]:
    """The trial's runs again, one at a time in this process with ``threads`` threads (nothing else running):
    the timing metrics' means over the bags. Reused when they exist with the same settings."""
    values = {d.name: trial.params[d.name] for d in setup.space if d.name in trial.params}
    _, jobs = plan_trial(setup, values, Path(setup.args.out) / "recheck", threads,
                         extra={"recheck_threads": threads})
    rows = [fleet.finished(job) or fleet.run_job(evaluate_job, job) for job in jobs]
    return {m: tuning.mean_over_bags(rows, m) for m in metrics}


def write_outputs(setup: Setup, study: Any, outcome: Outcome) -> Path | None:
    """best.yaml (when a trial met the constraints), report.md, the plots, trials.json."""
    out = Path(setup.args.out)
    plots = write_plots(study, out)
    best_file = None
    if outcome.best is not None:
        best_file = out / "best.yaml"
        values = {d.name: outcome.best.params[d.name] for d in setup.space}
        best_file.write_text(tuning.params_yaml(
            trial_params(setup, values),
            [f"fm-tune: trial {outcome.best.number}, {setup.args.objective} = {outcome.best.value:.6f} "
             f"(mean over {len(outcome.best.user_attrs.get('bags', {}))} bags)",
             f"base file: {setup.base_file}; tuned: {', '.join(values)}"]))
    write_json(out / "trials.json", [trial_record(t) for t in outcome.ranked])
    (out / "report.md").write_text(report_markdown(setup, study, outcome, plots, best_file))
    return best_file


def trial_record(t: Any) -> dict[str, Any]:
    return {"number": t.number, "value": t.value, "params": t.params, "defaults": bool(t.user_attrs.get("defaults")),
            "bags": t.user_attrs.get("bags"), "means": t.user_attrs.get("means"), "folder": t.user_attrs.get("folder")}


def write_plots(study: Any, out: Path) -> dict[str, str]:
    """Optuna's optimisation history and parameter importances (PED-ANOVA), as PNG; a plot that cannot be
    drawn (too few trials) is left out."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    from ..evaluation.report import _pyplot

    plt = _pyplot()
    plots = {}
    makers = {"optimisation history": ("history.png", lambda: ovm.plot_optimization_history(study)),
              "parameter importance": ("importance.png", lambda: ovm.plot_param_importances(
                  study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))}
    for title, (name, make) in makers.items():
        try:
            ax = make()
        except Exception:  # noqa: BLE001 - a plot Optuna cannot draw (too few trials) is left out
            continue
        fig = ax.figure
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        plots[title] = name
    return plots


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def report_markdown(setup: Setup, study: Any, outcome: Outcome, plots: dict[str, str], best_file: Path | None) -> str:
    a = setup.args
    lines = ["# fm-tune", "",
             f"- objective: `{a.objective}` ({setup.direction}), the mean over the bags",
             f"- backend `{setup.backend}`, base file `{setup.base_file}`, {len(study.trials)} trials in study "
             f"`{a.study_name}` (TPE, seed {a.seed}), {a.workers or 1} runs at once, {setup.threads} threads each",
             f"- search space: {'; '.join(d.describe() for d in setup.space)}",
             f"- constraints: {', '.join(map(str, setup.constraints)) or 'none'}"]
    if outcome.rechecked:
        lines.append(f"- timing constraints were checked on re-runs, one at a time with {outcome.recheck_threads} "
                     f"threads, of the defaults and of the best trials in order until one met them (at most "
                     f"{a.recheck}); during the study runs shared the cores, so their timings are not the node's")
    lines += ["", "## Best against the node's defaults", "", *comparison_table(setup, outcome), ""]
    if best_file is not None:
        lines += [f"Parameters: [{best_file.name}]({best_file.name}); reproduce: `fm-eval BAG --params {best_file}`",
                  ""]
    lines += ["## Best trials", "", *trials_table(setup, outcome), ""]
    for title, name in plots.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines) + "\n"


def timing_metrics(setup: Setup) -> list[str]:
    return sorted({c.metric for c in setup.constraints if c.timing})


def comparison_table(setup: Setup, outcome: Outcome) -> list[str]:
    """The best trial meeting the constraints, the study's best when another, and the defaults, per bag."""
    top = outcome.ranked[0] if outcome.ranked else None
    rows = [(f"best, trial {outcome.best.number}", outcome.best)] if outcome.best is not None else []
    if top is not None and top is not outcome.best:
        rows.append((f"best of the study, constraints aside: trial {top.number}", top))
    rows.append(("defaults", outcome.defaults))
    rows = [(title, t) for title, t in rows if t is not None]
    if not rows:
        return ["No trial finished."]
    labels = sorted({b for _, t in rows for b in t.user_attrs.get("bags", {})})
    timing = timing_metrics(setup) if outcome.rechecked else []
    lines = [f"| | {setup.args.objective} (mean) | " + " | ".join([*labels, *(f"{m} (alone)" for m in timing)])
             + " |", "|---" * (2 + len(labels) + len(timing)) + "|"]
    for title, t in rows:
        cells = [title, _fmt(t.value), *(_fmt(t.user_attrs.get("bags", {}).get(b)) for b in labels)]
        cells += [_fmt(outcome.rechecked.get(t.number, {}).get(m)) for m in timing]
        lines.append("| " + " | ".join(cells) + " |")
    if outcome.best is None:
        lines += ["", "No trial met the constraints: no best.yaml."]
    return lines


def trials_table(setup: Setup, outcome: Outcome) -> list[str]:
    """The ten best trials with their values (and the re-run timings where there are some)."""
    timing = timing_metrics(setup) if outcome.rechecked else []
    heads = ["trial", setup.args.objective, *(d.name for d in setup.space), *(f"{m} (alone)" for m in timing)]
    lines = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for t in outcome.ranked[:10]:
        cells = [f"{t.number}{' (defaults)' if t.user_attrs.get('defaults') else ''}", _fmt(t.value)]
        cells += [_fmt(t.params.get(d.name)) for d in setup.space]
        cells += [_fmt(outcome.rechecked.get(t.number, {}).get(m)) for m in timing]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        setup = make_setup(args)
        study = open_study(setup)
        run_study(setup, study)
        outcome = choose_best(setup, study)
        best_file = write_outputs(setup, study, outcome)
        if outcome.defaults is not None:
            print(f"defaults (trial {outcome.defaults.number}): {args.objective} = {outcome.defaults.value:.6f}")
        if outcome.best is None:
            print(f"fm-tune: no trial met {', '.join(map(str, setup.constraints)) or 'the study'}; see "
                  f"{args.out}/report.md", file=sys.stderr)
            return 1
        print(f"best (trial {outcome.best.number}): {args.objective} = {outcome.best.value:.6f}")
        print(f"parameters in {best_file} (fm-eval --params, ros2 launch ... params_file:=, ros2 param load); "
              f"report in {args.out}/report.md")
        return 0

    return run_main("fm-tune", body)


if __name__ == "__main__":
    sys.exit(main())
