"""Training on 2 CPU processes: tokens/s of one process against 2 ranks of DDP, FSDP2 and TP,
and the peak memory per rank of FSDP2 against DDP on GPT-2 124M.

    python benchmarks/distributed.py [--model depth-4] [--context 128] [--micro-batch 4]
        [--steps 8] [--log-interval 2] [--rounds 1] [--modes none,ddp,fsdp,tp]
        [--memory-context 64] [--memory-micro-batch 1] [--memory-steps 2]
        [--allocators default,mmap-128k] [--skip-throughput] [--skip-memory] [--json out.json]

Every case is a real training run, started as people start one: `torchrun --nproc-per-node 2
benchmarks/distributed.py --rank-runner RUN_DIR --train.parallel MODE ...` (plain `python`
for one process). The runner is `scratchlm train` without the preparation: it loads the run's
config with the case's overrides (scratchlm.config.load_run_config), joins the job
(train.distributed.distributed_job) and trains (train.loop.train_model). The data and the
tokenizer are prepared once, from configs/tiny.toml (Python's documentation, a 300-token BPE);
each case trains a copy of that run directory, fp32 on the CPU over gloo, AdamW.

(a) Throughput: the same model (--model: a preset, default depth-4: 4 layers, 256 wide, 2
    heads; the tokenizer's 300-token vocabulary unless --vocab-size) and the same global batch
    in every case: one process takes micro-batch 2B, each of the 2 ranks of DDP and FSDP2 takes
    B of its own windows, and TP's 2 ranks share one batch of 2B (tensor parallelism splits the
    model, not the data). tokens/s is the run's own figure, from its metrics.jsonl: the tokens
    of all ranks over the log windows after the first (which holds the start-up). Each run's
    tokens per step (tokens_seen / step) is printed, so an unequal batch would show.
(b) Memory: the GPT-2 124M shape (preset gpt2-124m with GPT-2's 50,257-token vocabulary, whose
    rows beyond the 300 tokens are never looked up) at a short context, under DDP and FSDP2.
    Each rank reads its own peak resident set (VmHWM in /proc/self/status; ru_maxrss would be
    wrong in children) as the run's first checkpoint starts (the training steps' peak) and at
    the end (gathering and writing the checkpoint included), at 2 and 4 ranks
    (--memory-ranks); --allocators also runs them under another malloc setting (ALLOCATORS
    below). The issue's target: FSDP2's per-rank peak at most 0.6x DDP's at 2 ranks.

Threads: one process gets every core (OMP_NUM_THREADS = the CPU count; a 1-thread run is shown
for reference); each of the 2 ranks gets 1 thread, so both sides use the same cores. On a
2-core machine little speed-up is possible: one process already keeps both cores busy with its
threads, and the ranks add all-reduces (DDP), all-gathers and reduce-scatters (FSDP2) or
per-layer all-reduces (TP) over gloo on the same cores. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from machine import cpu_description, load_average

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "tiny.toml"
RANKS = 2
GIB = 1024**3
MODES = ("none", "ddp", "fsdp", "tp")
RUNNER_FLAG = "--rank-runner"
GPT2_VOCAB = 50257
# glibc's malloc as it comes, and with a fixed mmap threshold: every allocation of 128 KiB or
# more is its own mapping, handed back to the system when freed. By default the threshold rises
# to the size of the largest block freed (up to 32 MiB), after which FSDP2's gathered weights
# (28 MiB a block here) come from the heap, and what they free stays resident.
ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "mmap-128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


# ---------------------------------------------------------------------------------------------
# The runner: one rank of a case (started by torchrun, or by plain python for one process).


def proc_status_bytes(key: str) -> int:
    """A size from /proc/self/status (VmHWM: the peak resident set so far; VmRSS: now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def run_rank(run_dir: Path, overrides: list[str]) -> int:
    """Train the run in `run_dir` as this rank, then write rank<N>.json there with its peaks."""
    import scratchlm.train.hooks as hooks
    from scratchlm.config import load_run_config
    from scratchlm.core.errors import ScratchLMError
    from scratchlm.train.distributed import distributed_job
    from scratchlm.train.loop import train_model

    start_rss = proc_status_bytes("VmRSS")  # the interpreter, torch and scratchlm
    peaks: dict[str, int] = {}
    policy = getattr(hooks, "CheckpointPolicy", None)
    save = getattr(policy, "save", None)
    if policy is not None and save is not None:
        # The training steps' peak, read as the run's first checkpoint starts (gathering a
        # sharded model and serialising add copies of their own). Ranks that never run this
        # hook (DDP's rank 1) report their final peak, which then holds no checkpoint.
        def recording_save(self: Any, *args: Any, **kwargs: Any) -> Any:
            peaks.setdefault("before_checkpoint", proc_status_bytes("VmHWM"))
            return save(self, *args, **kwargs)

        policy.save = recording_save
    try:
        config = load_run_config(run_dir, overrides)
        with distributed_job(config.train.parallel) as ranks:
            result = train_model(config)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = {
        "rank": ranks.rank,
        "world_size": ranks.world_size,
        "steps": result.steps,
        "start_rss_bytes": start_rss,
        "peak_bytes": proc_status_bytes("VmHWM"),
        "peak_before_checkpoint_bytes": peaks.get("before_checkpoint"),
    }
    (run_dir / f"rank{ranks.rank}.json").write_text(json.dumps(record))
    return 0


# ---------------------------------------------------------------------------------------------
# The driver: prepare the data once, run every case, print and save the results.


@dataclass
class Case:
    part: str  # "throughput" or "memory"
    mode: str  # train.parallel
    processes: int
    threads: int  # per process
    micro_batch: int  # train.batch_size of each rank
    allocator: str = "default"  # a key of ALLOCATORS
    ok: bool = False
    error: str = ""
    seconds: float = 0.0  # wall time of the whole command
    tokens_per_step: int = 0  # all ranks together, as the run counted them
    tokens_per_s: float = 0.0  # the best round's
    rounds: list[float] = field(default_factory=list)  # tokens/s of each round
    ranks: list[dict[str, Any]] = field(default_factory=list)

    def peak(self, key: str = "peak_bytes") -> int:
        """The largest per-rank peak: what each device must hold."""
        return max(r[key] or r["peak_bytes"] for r in self.ranks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_data(root: Path) -> Path:
    """configs/tiny.toml's data and tokenizer, prepared once (a few seconds) for every case."""
    from scratchlm.config import load_config
    from scratchlm.core.messages import quietly
    from scratchlm.runs.preparation import prepare_run

    config = load_config(RECIPE, [f"--out_dir={root}", "--name=prepared"])
    with contextlib.redirect_stdout(io.StringIO()), quietly(True):
        prepare_run(config)
    return Path(config.run_dir)


def model_overrides(model: str, context: int, vocab_size: int) -> list[str]:
    """`--model.*` for a preset name (or "tiny": the recipe's own model) at a context length;
    vocab_size 0 keeps the prepared tokenizer's (300), a larger one has rows never looked up."""
    flags = [] if model == "tiny" else [f"--model.preset={model}"]
    flags.append(f"--model.block_size={context}")
    if vocab_size:
        flags.append(f"--model.vocab_size={vocab_size}")
    return flags


def train_overrides(case: Case, steps: int, log_interval: int) -> list[str]:
    flags = [
        f"--train.parallel={case.mode}",
        f"--train.batch_size={case.micro_batch}",
        f"--train.max_steps={steps}",
        f"--train.log_interval={log_interval}",
        # One evaluation and one checkpoint, at the end, so the timed windows hold only steps.
        f"--train.eval_interval={steps}",
        "--train.eval_batches=1",
        f"--train.checkpoint_interval={steps}",
        "--train.keep_checkpoints=1",
        "--train.warmup_steps=0",
        "--train.device=cpu",
        "--train.dtype=float32",
    ]
    if case.mode == "tp":
        flags.append(f"--train.tp={RANKS}")
    return flags


def command_of(case: Case, run_dir: Path, overrides: list[str]) -> list[str]:
    runner = [str(Path(__file__).resolve()), RUNNER_FLAG, str(run_dir), *overrides]
    if case.processes == 1:
        return [sys.executable, *runner]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={case.processes}",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}", *runner,
    ]  # fmt: skip


def error_line(stderr: str) -> str:
    """The one line that says why a run failed: the runner's `error:` line, or the last
    exception of a traceback that is not the launcher's own summary."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    exception = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")
    found = [line for line in lines if exception.match(line) and "ChildFailedError" not in line]
    return (found or lines or ["no output"])[-1][:300]


def throughput_of(metrics: Path) -> tuple[float, int]:
    """tokens/s over the log windows after the first one, and the tokens of one step."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logged = [r for r in records if "tokens_per_s" in r]
    if len(logged) < 2:
        raise RuntimeError(f"{metrics} has {len(logged)} throughput windows; raise --steps")
    first, last = logged[0], logged[-1]
    rate = (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])
    return rate, last["tokens_seen"] // last["step"]


def run_case(case: Case, prepared: Path, work: Path, overrides: list[str]) -> None:
    run_dir = work / f"{case.part}-{case.mode}-{case.threads}-{case.allocator}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(prepared, run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(case.threads), **ALLOCATORS[case.allocator]}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    done = subprocess.run(
        command_of(case, run_dir, overrides), env=env, capture_output=True, text=True
    )
    case.seconds = time.perf_counter() - start
    try:
        if done.returncode != 0:
            case.error = error_line(done.stderr)
            return
        case.ranks = [
            json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(case.processes)
        ]
        if case.part == "throughput":
            rate, case.tokens_per_step = throughput_of(run_dir / "metrics.jsonl")
            case.rounds.append(rate)
            case.tokens_per_s = max(case.rounds)
        case.ok = True
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        case.error = f"{type(e).__name__}: {e}"
    finally:
        if not case.ok and os.environ.get("BENCH_TRACEBACK"):
            print(done.stderr[-5000:], file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)  # a 124M run's checkpoint is 1.5 GB


def describe(case: Case) -> str:
    return f"{case.processes} x {case.threads} thread{'s' if case.threads > 1 else ''}"


def print_throughput(cases: list[Case], cores: int) -> None:
    """Each case's tokens/s, and its ratio to one process on every core and on one thread."""
    ones = {c.threads: c for c in cases if c.mode == "none" and c.ok}
    print(f"\n{'mode':<6} {'processes x threads':<20} {'tokens/step':>11} {'tokens/s':>10} "
          f"{'vs 1 process':>13} {'vs 1 thread':>12} {'wall s':>7}")  # fmt: skip
    for c in cases:
        if not c.ok:
            print(f"{c.mode:<6} {describe(c):<20} FAILED: {c.error}")
            continue
        ratios = [
            f"{c.tokens_per_s / ones[n].tokens_per_s:.2f}x" if n in ones else "?"
            for n in (cores, 1)
        ]
        print(
            f"{c.mode:<6} {describe(c):<20} {c.tokens_per_step:>11,} {c.tokens_per_s:>10,.0f} "
            f"{ratios[0]:>13} {ratios[1]:>12} {c.seconds:>7.0f}"
        )


def print_memory(cases: list[Case], target: float) -> dict[str, dict[str, float]]:
    """Each rank's peaks, and FSDP2 / DDP of the largest rank's, under each allocator."""
    print(
        f"\n{'peak RSS per rank (GiB)':<34} {'training steps':>15} {'with checkpoint':>16} "
        f"{'at start':>9} {'wall s':>7}"
    )
    for c in cases:
        name = f"{c.mode} x{c.processes}, malloc {c.allocator}"
        if not c.ok:
            print(f"{name:<34} FAILED: {c.error}")
            continue
        for r in c.ranks:
            steps = (r["peak_before_checkpoint_bytes"] or r["peak_bytes"]) / GIB
            print(
                f"{name + ', rank ' + str(r['rank']):<34} {steps:>15.2f} "
                f"{r['peak_bytes'] / GIB:>16.2f} {r['start_rss_bytes'] / GIB:>9.2f} "
                f"{c.seconds:>7.0f}"
            )
    ratios: dict[str, dict[str, float]] = {}
    layouts = sorted({(c.processes, c.allocator) for c in cases})
    for ranks, allocator in layouts:
        by_mode = {
            c.mode: c for c in cases if c.ok and (c.processes, c.allocator) == (ranks, allocator)
        }
        if not {"ddp", "fsdp"} <= set(by_mode):
            continue
        ddp, fsdp = by_mode["ddp"], by_mode["fsdp"]
        key = f"{ranks} ranks, malloc {allocator}"
        ratios[key] = {
            "training_steps": fsdp.peak("peak_before_checkpoint_bytes")
            / ddp.peak("peak_before_checkpoint_bytes"),
            "with_checkpoint": fsdp.peak() / ddp.peak(),
        }
        for when, ratio in ratios[key].items():
            verdict = "met" if ratio <= target else "NOT met"
            judged = f"target <= {target:.1f}x: {verdict}" if ranks == 2 else "target is for 2"
            print(
                f"{key}: FSDP2 / DDP, largest rank's peak ({when.replace('_', ' ')}): "
                f"{ratio:.2f}x ({judged})"
            )
    return ratios


def draw_chart(path: Path, throughput: list[Case], memory: list[Case], title: str) -> None:
    """tokens/s of each case, and each rank's peak memory against the target; a failed case
    is a labelled empty slot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (throughput, memory) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, cases in zip(axes[0], panels, strict=True):
        if cases is throughput:
            names = [f"{c.mode}\n{c.processes} x {c.threads}" for c in cases]
            values = [c.tokens_per_s if c.ok else 0.0 for c in cases]
            ax.bar(names, values, color=["C0" if c.mode == "none" else "C1" for c in cases])
            ones = [c for c in cases if c.mode == "none" and c.ok]
            base = max(ones, key=lambda c: c.threads).tokens_per_s if ones else 0.0
            for i, c in enumerate(cases):
                text = f"{c.tokens_per_s / base:.2f}x" if c.ok and base else "FAILED"
                ax.annotate(text, (i, values[i]), ha="center", va="bottom", fontsize=8)
            ax.set_ylabel("tokens/s (all ranks)")
            ax.set_xlabel("train.parallel, processes x threads")
            ax.set_title("throughput, same model and global batch")
            continue
        bars = [(c, r) for c in cases for r in (c.ranks if c.ok else [None])]
        names = [
            f"{c.mode} {'r' + str(r['rank']) if r else 'FAILED'}\nof {c.processes}" for c, r in bars
        ]
        steps = [(r["peak_before_checkpoint_bytes"] or r["peak_bytes"]) / GIB if r else 0.0
                 for _, r in bars]  # fmt: skip
        total = [r["peak_bytes"] / GIB if r else 0.0 for _, r in bars]
        x = list(range(len(bars)))
        ax.bar([i - 0.2 for i in x], steps, width=0.4, label="training steps", color="C1")
        ax.bar([i + 0.2 for i in x], total, width=0.4, label="with checkpoint", color="C2")
        ddp = [c for c in cases if c.mode == "ddp" and c.ok]
        if ddp:
            target = 0.6 * min(c.peak() for c in ddp) / GIB
            ax.axhline(target, color="k", ls="--", lw=1, label="0.6x DDP's peak")
        ax.set_xticks(x, names, fontsize=7)
        ax.set_ylabel("peak resident set per rank (GiB)")
        ax.set_xlabel("train.parallel, rank of N ranks")
        ax.set_title("gpt2-124m, peak memory per rank")
        ax.set_ylim(top=1.25 * max(total + steps + [0.1]))
        ax.legend(fontsize=8, loc="upper left", ncol=3)
    fig.suptitle(textwrap.fill(title, 120), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def runs_to_time(modes: list[str], cores: int) -> list[tuple[str, int]]:
    """(train.parallel, threads per process): one process on every core and on one (the ranks'
    share of the machine, which shows what the second process adds), then 1 thread per rank."""
    runs = []
    for mode in modes:
        if mode == "none":
            runs += [("none", cores)] + ([("none", 1)] if cores > 1 else [])
        else:
            runs.append((mode, 1))
    return runs


def time_throughput(args: argparse.Namespace, prepared: Path, work: Path) -> list[Case]:
    """(a): every case --rounds times, the order rotating from round to round so a burst of
    other work on the machine does not always hit the same case; each keeps its best round."""
    cores = os.cpu_count() or 1
    cases = []
    for mode, threads in runs_to_time(args.modes, cores):
        one = mode == "none"
        shares_batch = one or mode == "tp"  # every rank computes on the whole batch
        cases.append(
            Case(
                "throughput", mode, processes=1 if one else RANKS, threads=threads,
                micro_batch=args.micro_batch * (RANKS if shares_batch else 1),
            )
        )  # fmt: skip
    model = model_overrides(args.model, args.context, args.vocab_size)
    for n in range(args.rounds):
        shift = n % len(cases)
        for case in cases[shift:] + cases[:shift]:
            if case.error:  # failed once: it would fail again
                continue
            run_case(case, prepared, work, model + train_overrides(
                case, args.steps, args.log_interval))  # fmt: skip
            state = f"{case.rounds[-1]:,.0f} tokens/s" if case.ok else "FAILED"
            print(
                f"  round {n + 1}, {case.mode}, {describe(case)}: {state} ({case.seconds:.0f}s)",
                flush=True,
            )
    return cases


def measure_memory(args: argparse.Namespace, prepared: Path, work: Path) -> list[Case]:
    """(b): GPT-2 124M under DDP and FSDP2, each rank's peak resident set."""
    # GPT-2's vocabulary, so the model is the 124M of the issue (its embedding is 31% of it).
    model = model_overrides("gpt2-124m", args.memory_context, GPT2_VOCAB)
    cases = []
    for ranks in args.memory_ranks:
        for allocator in args.allocators:
            for mode in ("ddp", "fsdp"):
                case = Case("memory", mode, ranks, 1, args.memory_micro_batch, allocator)
                overrides = model + train_overrides(case, args.memory_steps, 1)
                run_case(case, prepared, work, overrides)
                state = "done" if case.ok else "FAILED"
                print(
                    f"  {mode} x {ranks} ranks, malloc {allocator}: {state} ({case.seconds:.0f}s)",
                    flush=True,
                )
                cases.append(case)
    return cases


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == RUNNER_FLAG:
        raise SystemExit(run_rank(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="depth-4", help="a model preset, or tiny (the recipe's)")
    parser.add_argument("--vocab-size", type=int, default=0, help="0: the tokenizer's (300)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--log-interval", type=int, default=2, help="steps per tokens/s window")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4, help="per rank of DDP and FSDP2")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each case; the best counts")
    parser.add_argument("--modes", default=",".join(MODES), help="train.parallel values to time")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-context", type=int, default=64)
    parser.add_argument("--memory-micro-batch", type=int, default=1)
    parser.add_argument(
        "--memory-ranks", default="2,4", help="ranks of the memory runs (the issue's target: 2)"
    )
    parser.add_argument(
        "--allocators",
        default="default",
        help=f"malloc settings of the memory runs, of {','.join(ALLOCATORS)} (scratchlm pins glibc's mmap threshold itself)",
    )
    parser.add_argument("--memory-target", type=float, default=0.6, help="FSDP2 / DDP at most")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here, and a PNG beside")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown --modes {', '.join(sorted(unknown))}; choose from {MODES}")
    args.memory_ranks = [int(n) for n in args.memory_ranks.split(",") if n]
    args.allocators = [a for a in args.allocators.split(",") if a]
    if set(args.allocators) - set(ALLOCATORS):
        parser.error(f"--allocators: choose from {', '.join(ALLOCATORS)}")
    if args.steps < 2 * args.log_interval:
        parser.error("--steps must hold at least two --log-interval windows (the first is skipped)")

    import torch

    cores = os.cpu_count() or 1
    header = (
        f"{cpu_description()}; torch {torch.__version__}; gloo; fp32, AdamW; one process: "
        f"{cores} threads (and 1, for reference); each of {RANKS} ranks: 1 thread (OMP_NUM_THREADS)"
    )
    print(header, flush=True)
    start_load = load_average()
    print(f"load average at the start {start_load}", flush=True)
    throughput: list[Case] = []
    memory: list[Case] = []
    ratios: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="scratchlm-distributed-") as tmp:
        prepared = prepare_data(Path(tmp))
        if not args.skip_throughput:
            print(
                f"\n(a) throughput: model {args.model}, context {args.context}, global batch "
                f"{RANKS * args.micro_batch} sequences, {args.steps} steps, tokens/s over steps "
                f"{args.log_interval + 1}-{args.steps}, best of {args.rounds} rounds",
                flush=True,
            )
            throughput = time_throughput(args, prepared, Path(tmp))
            print_throughput(throughput, cores)
        if not args.skip_memory:
            print(
                f"\n(b) memory: gpt2-124m, context {args.memory_context}, micro-batch "
                f"{args.memory_micro_batch} per rank, {args.memory_steps} steps",
                flush=True,
            )
            memory = measure_memory(args, prepared, Path(tmp))
            ratios = print_memory(memory, args.memory_target)
    end_load = load_average()
    print(f"\nload average at the end {end_load}")
    if args.json:
        results = {
            "machine": header,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "load_average": {"start": start_load, "end": end_load},
            "throughput": [asdict(c) for c in throughput],
            "memory": [asdict(c) for c in memory],
            "fsdp_over_ddp_peak": ratios,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        chart = args.json.with_suffix(".png")
        draw_chart(chart, throughput, memory, header)
        print(f"results: {args.json}, chart: {chart}")


if __name__ == "__main__":
    main()
