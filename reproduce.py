"""The paper's protocol as one command, and its results as one table.

    python reproduce.py run nyuv2 --data-root datasets/nyuv2 --out results [-- --amp bf16 --channels-last]
    python reproduce.py run adience --data-root datasets/adience --out results --folds 0-4
    python reproduce.py report results/adience --format md --json adience.json --plot adience_delta.png

``run`` trains stage 1 (the single-task pair, method 'none') once per (fold, seed), stage 2 of
every fused method from it, and evaluates each run's best checkpoint on the test split with
eval.py (training in a process of its own, evaluation in this one: ``--dry-run`` prints both as
shell commands). The protocols (methods, seeds, folds) are the families' (families/, ``Family.protocols``).
Every run lives in its own folder (the training logdir):

    OUT/<family>/<method>/seed<S>/            nyuv2 (no folds)
    OUT/<family>/<method>/fold<F>_seed<S>/    adience (--test-fold F)
    OUT/<family>/<method>+<weighting>/...     with --weightings (a weighting or gradient method per run)
        checkpoint_last.pth  checkpoint_best.pth  log.jsonl  events.out.tfevents.*
        args.json   the run's settings (written by the training script)
        eval.json   eval.py --json output: its presence marks the run as finished
        per_class_iou.json   nyuv2 only: {class name: IoU} (eval.py --per-class)

A run with eval.json is skipped (its files untouched); one with checkpoint_last.pth but no
eval.json was interrupted and continues with --resume (exact; a run whose epochs are all done
returns at once and is evaluated); anything else starts fresh. ``--dry-run`` prints one shell
line per run (training && evaluation), stage 1 before stage 2, for a cluster's job array.

``report`` reads every eval.json under a folder (method, fold and seed from the folder layout)
and prints methods x metrics as mean +- sample standard deviation (n - 1) over runs, the number
of runs, and the multi-task deltas (engine.metrics.multitask_delta: 'delta/mean' as delta_m, the
mean over metrics, and 'delta/mean_task' as delta_m_task, the mean over tasks) of each fused run
against the single-task run of the same fold and seed, averaged the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.weighting import WEIGHTINGS
from families import Protocol, protocols

REPO = Path(__file__).resolve().parent
DELTA = "delta_m"  # the report's name for multitask_delta's 'delta/mean' (the flat mean over metrics)
DELTA_TASK = "delta_m_task"  # ... and for 'delta/mean_task' (the mean over tasks of each task's mean)
DELTAS = {DELTA: "delta/mean", DELTA_TASK: "delta/mean_task"}
DELTA_NOTE = (
    "delta_m: the mean over the metrics (Maninis et al. 2019; the flat mean of the Nash-MTL, CAGrad and "
    "FAMO tables); delta_m_task: the mean over tasks of each task's mean (LibMTL); both in %, positive = "
    "better than the single-task run"
)
RUN_DIR = re.compile(r"^(?:fold(?P<fold>\d+)_)?seed(?P<seed>\d+)$")
# eval.py flags that mean the same thing in training: passed on from the extra training flags.
EVAL_PASSTHROUGH = ("--device", "--workers", "--amp")


EVALUATOR = "eval.py"
PROTOCOLS: dict[str, Protocol] = protocols()  # every family's (families/), e.g. nyuv2, adience, series


class ProtocolError(Exception):
    """A mistake on the command line or in the inputs: one line, exit code 2."""


@dataclass
class Run:
    family: Protocol
    method: str
    fold: int | None
    seed: int
    dir: Path
    init: Path | None = None  # stage 2: the stage-1 run's best checkpoint
    status: str = field(default="fresh")  # 'finished' | 'interrupted' | 'fresh'
    tasks: tuple[str, ...] = ()  # --tasks through the protocol's task flag (empty: the script's default)
    weighting: str | None = None  # --weighting for this run (None: the recipe's)

    @property
    def name(self) -> str:
        return f"{self.dir.parent.parent.name}/{self.method}/{self.dir.name}"

    @property
    def last(self) -> Path:
        return self.dir / "checkpoint_last.pth"

    @property
    def best(self) -> Path:
        return self.dir / "checkpoint_best.pth"

    @property
    def eval_json(self) -> Path:
        return self.dir / "eval.json"


def experiment(family: Protocol, tasks: tuple[str, ...] = ()) -> str:
    """The results folder of a protocol: its name, with the tasks when chosen (nyuv2-seg-depth-normal)."""
    return "-".join((family.name, *tasks))


def protocol_of(folder: str) -> str:
    """The protocol of a results folder (the inverse of ``experiment``)."""
    return folder.split("-")[0]


def method_label(method: str, weighting: str | None) -> str:
    """The run's method folder: the method, or ``<method>+<weighting>`` when the protocol varies the weighting."""
    return method if weighting is None else f"{method}+{weighting}"


def run_dir(
    out: Path,
    family: Protocol,
    method: str,
    fold: int | None,
    seed: int,
    tasks: tuple[str, ...] = (),
    weighting: str | None = None,
) -> Path:
    folder = out / experiment(family, tasks) / method_label(method, weighting)
    return folder / (f"fold{fold}_seed{seed}" if fold is not None else f"seed{seed}")


def run_status(run: Run) -> str:
    if run.eval_json.is_file():
        return "finished"
    return "interrupted" if run.last.is_file() else "fresh"


def plan(
    family: Protocol,
    out: Path,
    methods: list[str],
    folds: list[int | None],
    seeds: list[int],
    tasks: tuple[str, ...] = (),
    weightings: tuple[str | None, ...] = (None,),
) -> list[Run]:
    """Every run in dependency order: all stage-1 runs (single-task, and methods trained from
    ImageNet), then all stage-2 runs. A stage-2 method brings its stage-1 run along. Every method
    but the single-task one runs once per weighting (None: the recipe's)."""
    if family.single is not None and any(family.stage2(m) for m in methods) and family.single not in methods:
        methods = [family.single, *methods]
    first = [m for m in methods if not family.stage2(m)]
    second = [m for m in methods if family.stage2(m)]
    runs = []
    for group in (first, second):
        for fold in folds:
            for seed in seeds:
                for method in group:
                    for weighting in (None,) if method == family.single else weightings:
                        where = run_dir(out, family, method, fold, seed, tasks, weighting)
                        run = Run(family, method, fold, seed, where, tasks=tasks, weighting=weighting)
                        if family.stage2(method):
                            run.init = run_dir(out, family, family.single, fold, seed, tasks) / "checkpoint_best.pth"
                        run.status = run_status(run)
                        runs.append(run)
    return runs


def train_command(run: Run, data_root: Path, extra: list[str], torchrun: int = 0) -> list[str]:
    f = run.family
    launcher = ["torchrun", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    cmd = [
        *launcher,
        str(REPO / f.script),
        "--data-root",
        str(data_root),
        f.method_flag,
        run.method,
        "--seed",
        str(run.seed),
    ]
    if run.fold is not None:
        cmd += [f.fold_flag, str(run.fold)]
    cmd += [
        *f.script_args,
        *([f.task_flag, *run.tasks] if run.tasks else []),
        *(["--weighting", run.weighting] if run.weighting else []),
        "--out",
        str(run.last),
        "--logdir",
        str(run.dir),
    ]
    if run.init is not None:
        cmd += ["--init", str(run.init)]
    if run.status == "interrupted":
        cmd += ["--resume", str(run.last)]
    elif run.dir.is_dir() and any(run.dir.iterdir()):
        # An attempt that stopped before its first checkpoint (a crash, a non-finite loss in epoch 1)
        # left only logs: nothing to resume, so the new attempt replaces them.
        cmd += ["--overwrite"]
    return cmd + list(extra)


def eval_command(run: Run, data_root: Path, extra: list[str]) -> list[str]:
    cmd = [
        sys.executable,
        str(REPO / EVALUATOR),
        "--checkpoint",
        str(run.best),
        "--data-root",
        str(data_root),
        "--json",
        str(run.eval_json),
    ]
    if run.family.per_class:
        cmd += ["--per-class", str(run.dir / "per_class_iou.json")]
    for i, a in enumerate(extra):  # --flag value or --flag=value
        name = a.split("=", 1)[0]
        if name in EVAL_PASSTHROUGH:
            cmd += [a] if "=" in a else extra[i : i + 2]
    return cmd


def parse_ints(text: str, what: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,5-6' -> [0, 2, 5, 6]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += range(int(a), int(b) + 1) if b else [int(a)]
    except ValueError:
        raise ProtocolError(f"--{what} {text!r}: expected numbers and ranges such as 0,1,2 or 0-4") from None
    return list(dict.fromkeys(out))


def evaluate_here(cmd: list[str]) -> int:
    """Run an eval.py command line in this process (its exit code): the same arguments and the same code as
    ``python eval.py ...``, without a second interpreter importing torch for every run."""
    import traceback

    import eval as evaluation

    try:
        return evaluation.main(evaluation.get_args_parser().parse_args(cmd[cmd.index(str(REPO / EVALUATOR)) + 1 :]))
    except SystemExit as e:  # argparse
        return int(e.code or 0)
    except Exception:  # a crash in evaluation is reported like a failed command, the finished runs kept
        traceback.print_exc()
        return 1


def execute(cmd: list[str]) -> int:
    """Run one command, inheriting stdout / stderr; returns its exit code (128 + N if killed by signal N).

    The child runs in its own session and SIGINT / SIGTERM reach it exactly once, forwarded from
    here: the training scripts save a resumable checkpoint on the first signal and stop at once on
    a second, so a Ctrl-C must not arrive twice (terminal group + forwarding), and the child must
    not be killed while it saves (which subprocess.run does on KeyboardInterrupt)."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, frame) -> None:
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 - code if code < 0 else code


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    family = PROTOCOLS[args.family]
    if not (REPO / family.script).is_file():
        raise ProtocolError(f"family {family.name!r} needs {family.script}, which this checkout does not have")
    methods = args.methods.split(",") if args.methods else list(family.methods)
    unknown = [m for m in methods if m not in family.methods]
    if unknown:
        raise ProtocolError(f"--methods: {', '.join(unknown)} not in {family.name}'s {', '.join(family.methods)}")
    if family.folds is None:
        if args.folds:
            raise ProtocolError(f"--folds: {family.name} has no folds")
        folds: list[int | None] = [None]
    else:
        folds = parse_ints(args.folds, "folds") if args.folds else list(family.folds)
        bad = [f for f in folds if f not in family.folds]
        if bad:
            raise ProtocolError(f"--folds: {bad} not among {family.name}'s folds {list(family.folds)}")
    seeds = parse_ints(args.seeds, "seeds") if args.seeds else list(family.seeds)
    tasks = tuple(args.tasks or ())
    if tasks and family.task_flag is None:
        raise ProtocolError(f"--tasks: {family.name}'s tasks are fixed")
    data_root, out = Path(args.data_root).resolve(), Path(args.out).resolve()
    if not data_root.is_dir():
        raise ProtocolError(f"--data-root {args.data_root}: not a folder")
    weightings: tuple[str | None, ...] = (None,)
    if args.weightings:
        weightings = tuple(dict.fromkeys(args.weightings.split(",")))
        bad = [w for w in weightings if w not in WEIGHTINGS]
        if bad:
            raise ProtocolError(f"--weightings: {', '.join(bad)} not among {', '.join(WEIGHTINGS)}")
        if family.single is None:
            raise ProtocolError(f"--weightings: {family.name} trains one task, there is nothing to weigh")
    runs = plan(family, out, methods, folds, seeds, tasks, weightings)
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "interrupted", "fresh")}
    log = sys.stderr if args.dry_run else sys.stdout
    print(
        f"plan: {len(runs)} runs of {family.name} ({', '.join(dict.fromkeys(r.dir.parent.name for r in runs))}; "
        f"folds {'-' if folds == [None] else ','.join(map(str, folds))}; seeds {','.join(map(str, seeds))}) "
        f"under {out / experiment(family, tasks)}: {counts['finished']} finished, {counts['interrupted']} interrupted "
        f"(resumed), {counts['fresh']} to train",
        file=log,
        flush=True,
    )
    for status in ("finished", "interrupted"):
        if counts[status]:
            print(f"  {status}: {', '.join(r.name for r in runs if r.status == status)}", file=log, flush=True)
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.name}"
        if run.status == "finished":
            print(f"{head}: finished, skipped", file=log, flush=True)
            continue
        train, evaluate = train_command(run, data_root, extra, args.torchrun), eval_command(run, data_root, extra)
        if args.dry_run:
            print(f"{shlex.join(train)} && {shlex.join(evaluate)}", flush=True)
            continue
        print(f"{head}: {'resuming' if run.status == 'interrupted' else 'training'}", flush=True)
        t0 = time.time()
        run.dir.mkdir(parents=True, exist_ok=True)
        for what, cmd in (("training", train), ("evaluation", evaluate)):
            code = execute(cmd) if what == "training" else evaluate_here(cmd)
            script = Path(cmd[cmd.index("--data-root") - 1]).name
            if code in (130, 143):  # SIGINT / SIGTERM: the training script saved a resumable checkpoint
                print(
                    f"stopped: run {run.name}: {what} ({script}) interrupted (exit code {code}); "
                    "the same command resumes it",
                    file=sys.stderr,
                    flush=True,
                )
                return code
            if code != 0:
                print(
                    f"error: run {run.name}: {what} ({script}) failed with exit code {code}; finished runs are kept",
                    file=sys.stderr,
                    flush=True,
                )
                return code
        print(f"{head}: done in {time.time() - t0:.0f} s -> {run.eval_json}", flush=True)
    return 0


# -- report ----------------------------------------------------------------------------------


def load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProtocolError(f"{path}: not readable as JSON ({e})") from None
    return {k: (math.nan if v is None else v) for k, v in data.items()}


def collect(root: Path) -> tuple[str, list[dict]]:
    """Every finished run under ``root`` (an --out folder or one family's folder in it):
    (family name, [{'method', 'fold', 'seed', 'metrics', 'per_class'}])."""
    found: dict[str, list[dict]] = {}
    for path in sorted(root.resolve().glob("**/eval.json")):
        m = RUN_DIR.match(path.parent.name)
        if not m or len(path.parts) < 4:
            continue
        family, method = path.parts[-4], path.parts[-3]
        per_class = path.parent / "per_class_iou.json"
        found.setdefault(family, []).append(
            {
                "method": method,
                "fold": None if m["fold"] is None else int(m["fold"]),
                "seed": int(m["seed"]),
                "metrics": {k: v for k, v in load_json(path).items() if not k.startswith("delta/")},
                "per_class": load_json(per_class) if per_class.is_file() else None,
            }
        )
    if not found:
        raise ProtocolError(f"{root}: no finished run (OUT/<family>/<method>/[fold<F>_]seed<S>/eval.json)")
    if len(found) > 1:
        raise ProtocolError(
            f"{root} holds several families ({', '.join(sorted(found))}): "
            f"report one of {', '.join(str(root / f) for f in sorted(found))}"
        )
    return next(iter(found.items()))


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1; NaN for a single value) of the finite values."""
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def method_order(family: str, methods: set[str]) -> list[str]:
    """The protocol's methods in its order, each followed by its ``+<weighting>`` variants; others last."""
    family = protocol_of(family)
    known = list(PROTOCOLS[family].methods) if family in PROTOCOLS else []

    def key(m: str) -> tuple[int, str, str]:
        base, _, weighting = m.partition("+")
        return (known.index(base) if base in known else len(known), base, weighting)

    return sorted(methods, key=key)


def aggregate(family: str, runs: list[dict]) -> tuple[list[dict], list[str], list[str]]:
    """Rows {'method', 'metric', 'mean', 'std', 'n'} for every method x metric, plus 'delta_m' of
    each fused method (per run against the single-task run of the same fold and seed); also the
    metric names in order and the notes (fused runs without a single-task partner)."""
    from engine.metrics import multitask_delta  # the one definition of metric directions

    single = PROTOCOLS[protocol_of(family)].single if protocol_of(family) in PROTOCOLS else "none"
    metrics = list(dict.fromkeys(k for r in runs for k in r["metrics"]))
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    baseline = {(r["fold"], r["seed"]): r["metrics"] for r in by_method.get(single, [])}
    rows, notes = [], []
    for method in method_order(family, set(by_method)):
        group = by_method[method]
        for metric in metrics:
            mean, std, n = mean_std([r["metrics"].get(metric, math.nan) for r in group])
            rows.append({"method": method, "metric": metric, "mean": mean, "std": std, "n": n})
        if single is None or method == single:
            continue
        deltas = []
        for r in group:
            base = baseline.get((r["fold"], r["seed"]))
            if base is None:
                notes.append(f"{method} fold {r['fold']} seed {r['seed']}: no {single} run to compare with")
                continue
            reported = {k: v for k, v in r["metrics"].items() if math.isfinite(v)}  # null in eval.json: undefined
            deltas.append(multitask_delta(reported, base))
        for name, key in DELTAS.items():
            mean, std, n = mean_std([d.get(key, math.nan) for d in deltas])
            rows.append({"method": method, "metric": name, "mean": mean, "std": std, "n": n})
    return rows, metrics, notes


def per_class_rows(family: str, runs: list[dict]) -> tuple[list[dict], list[str]]:
    names = list(dict.fromkeys(k for r in runs if r["per_class"] for k in r["per_class"]))
    rows = []
    for method in method_order(family, {r["method"] for r in runs if r["per_class"]}):
        group = [r["per_class"] for r in runs if r["method"] == method and r["per_class"]]
        for name in names:
            mean, std, n = mean_std([g.get(name, math.nan) for g in group])
            rows.append({"method": method, "metric": name, "mean": mean, "std": std, "n": n})
    return rows, names


def runs_per_method(runs: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        out[r["method"]] = out.get(r["method"], 0) + 1
    return out


def fmt(x: float, digits: int) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 else f"{x:.{digits}f}"


def render(rows: list[dict], columns: list[str], n_runs: dict[str, int] | None, style: str, title: str) -> str:
    """methods x columns, each cell mean +- std; column 'n' = runs of the method (none if n_runs is None)."""
    table = {(r["method"], r["metric"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    digits = {c: 2 if c in DELTAS else 4 for c in columns}
    n_head = ["n"] if n_runs is not None else []

    def n_cell(m: str) -> list[str]:
        return [str(n_runs.get(m, 0))] if n_runs is not None else []

    if style == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method", *n_head, *[h for c in columns for h in (c, f"{c} std")]])
        for m in methods:
            cells = [table.get((m, c), {"mean": math.nan, "std": math.nan}) for c in columns]
            w.writerow([m, *n_cell(m), *[v for cell in cells for v in (repr_num(cell["mean"]), repr_num(cell["std"]))]])
        return buf.getvalue()

    def cell(m: str, c: str) -> str:
        r = table.get((m, c))
        if r is None or r["n"] == 0:
            return ""
        pm = r"$\pm$" if style == "tex" else "±"
        return f"{fmt(r['mean'], digits[c])} {pm} {fmt(r['std'], digits[c])}"

    if style == "md":
        lines = [
            f"**{title}**",
            "",
            "| " + " | ".join(["method", *n_head, *columns]) + " |",
            "|" + "---|" * (1 + len(n_head) + len(columns)),
        ]
        lines += ["| " + " | ".join([m, *n_cell(m), *(cell(m, c) for c in columns)]) + " |" for m in methods]
        return "\n".join(lines) + "\n"
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [
        f"% {title}",
        r"\begin{tabular}{l " + "r " * len(n_head) + "c " * len(columns) + "}",
        r"\hline",
        " & ".join(["method", *n_head, *(esc(c) for c in columns)]) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join([esc(m), *n_cell(m), *(cell(m, c) for c in columns)]) + r" \\" for m in methods]
    return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"


def repr_num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(x)


def plot_deltas(rows: list[dict], path: Path, family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas = [r for r in rows if r["metric"] == DELTA and r["n"] > 0]
    fig, ax = plt.subplots(figsize=(1.2 * max(len(deltas), 2) + 1.5, 3.5))
    x = range(len(deltas))
    means = [r["mean"] for r in deltas]
    errs = [r["std"] if math.isfinite(r["std"]) else 0.0 for r in deltas]
    ax.bar(x, means, yerr=errs, capsize=4, color=["tab:green" if m >= 0 else "tab:red" for m in means])
    ax.set_xticks(list(x), [f"{r['method']}\n(n={r['n']})" for r in deltas])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("Δm vs single-task (%)")
    ax.set_title(f"{family}: multi-task delta, mean ± std over runs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_report(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise ProtocolError(f"{args.dir}: not a folder")
    family, runs = collect(root)
    rows, metrics, notes = aggregate(family, runs)
    n_runs = runs_per_method(runs)
    deltas = [d for d in DELTAS if any(r["metric"] == d for r in rows)]
    print(
        render(rows, metrics + deltas, n_runs, args.format, f"{family}: mean ± sample std over runs (n = runs)"), end=""
    )
    if deltas:
        print(DELTA_NOTE)
    class_rows, names = per_class_rows(family, runs)
    if class_rows:
        # Classes as rows read better than 40 columns: transpose into class x method.
        t_rows = [
            {"method": r["metric"], "metric": r["method"], "mean": r["mean"], "std": r["std"], "n": r["n"]}
            for r in class_rows
        ]
        t_cols = list(dict.fromkeys(r["method"] for r in class_rows))
        print()
        print(
            render(t_rows, t_cols, None, args.format, f"{family}: per-class IoU, mean ± sample std over runs"), end=""
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        clean = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows
        ]
        Path(args.json).write_text(json.dumps({"rows": clean}, indent=2))
    if args.plot:
        plot_deltas(rows, Path(args.plot), family)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="The paper's protocol as one command (run) and its table (report)",
        epilog="Flags after a bare -- go to every training run unchanged.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate every run of the protocol (skips finished runs)")
    r.add_argument("family", choices=list(PROTOCOLS))
    r.add_argument("--data-root", required=True, help="the dataset folder, as for the training script")
    r.add_argument("--out", required=True, help="results folder: OUT/<family>/<method>/[fold<F>_]seed<S>/")
    r.add_argument("--methods", default=None, help="comma-separated (default: all of the family's methods)")
    r.add_argument("--seeds", default=None, help="e.g. 0,1,2 or 0-2 (default: nyuv2 0,1,2; adience 0)")
    r.add_argument("--folds", default=None, help="adience test folds, e.g. 0-4 (the default) or 0,3")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print one shell line per pending run (training && evaluation), in dependency order",
    )
    r.add_argument("--torchrun", type=int, default=0, metavar="N", help="train each run on N GPUs with torchrun")
    r.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help="nyuv2, cityscapes: the tasks in branch order (the training script's --tasks); the runs go to "
        "OUT/<protocol>-<task>-.../",
    )
    r.add_argument(
        "--weightings",
        default=None,
        metavar="W,W",
        help="comma-separated loss weightings or gradient methods (e.g. dwa,pcgrad,nash): every fused method "
        "runs once with each (folders <method>+<weighting>); default: the recipe's weighting, one run",
    )
    q = sub.add_parser("report", help="table of methods x metrics over the runs under a folder")
    q.add_argument("dir", help="the --out folder of `run` (one protocol) or OUT/<protocol>[-<tasks>]")
    q.add_argument("--format", choices=("md", "csv", "tex"), default="md")
    q.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help='write {"rows": [{"method", "metric", "mean", "std", "n"}, ...]} (metric delta_m: deltas)',
    )
    q.add_argument("--plot", default=None, metavar="PNG", help="bar plot of delta_m per method with std error bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = get_args_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, extra)
        if extra:
            raise ProtocolError("report takes no training flags after --")
        return cmd_report(args)
    except ProtocolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
