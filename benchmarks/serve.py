"""Serving under load: `scratchlm serve` with N concurrent streaming chat clients.

Starts `scratchlm serve MODEL --port 0 --max-batch 16` on 127.0.0.1 itself, sends one warm-up
request, then for each N of --clients runs N closed-loop clients (each sends its next request
as soon as the last one ends) for --seconds, through the official `openai` client with
streaming on and `stream_options.include_usage`: fixed prompts (a small varied set), fixed
max_tokens, temperature 0.7 with a seed per request. Reported per level: requests/s, output
tokens/s (from the streamed usage), p50/p95 time to first token and latency, and errors (must
be 0: any error is printed and the exit status is 1). The headline is continuous batching's
gain: aggregate output tokens/s at 8 clients over 1 client's (the issue's target: >= 3x with
SmolLM2-135M-Instruct on this CPU). A level's time runs from its start until its last request
ends (requests in flight at the deadline finish and count), so no tail is left out.

Writes the results as JSON and a PNG (tokens/s and p50 time to first token against clients)
beside it, and stops the server at the end, on Ctrl-C and on SIGTERM.

    python benchmarks/serve.py [--model smollm2-135m-instruct] [--clients 1,4,8,16]
        [--seconds 30] [--max-tokens 64] [--max-batch 16] [--quantize int4] [--dtype bfloat16]
        [--out benchmarks/results/serve-<cpu>.json]
    python benchmarks/serve.py --model RUN --seconds 5 --clients 1,2     # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_description, load_average

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to cook.",
    "Tell me a short story about a robot who learns to paint.",
    "What are the benefits of regular exercise?",
    "Summarise the plot of Romeo and Juliet.",
    "How do I make a good cup of tea?",
]
TEMPERATURE = 0.7
URL = re.compile(r"https?://[\w.\-\[\]:]+:\d+")
STARTUP_SECONDS = 600  # loading (and maybe quantising) SmolLM2 on a busy 2-core machine
REQUEST_TIMEOUT = 300.0  # one request of at most max_tokens tokens, at worst a queued one


# ---------------------------------------------------------------------------------------------
# The server: a child process, stopped whatever happens to this one.


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still work
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """`scratchlm serve` on 127.0.0.1 and a free port; its output drained by a thread (a full
    pipe would block it) and the last lines kept for the error message if it dies."""

    def __init__(self, model: str, max_batch: int, extra: list[str]) -> None:
        command = [sys.executable, "-m", "scratchlm", "serve", model, "--host", "127.0.0.1"]
        command += ["--port", "0", "--max-batch", str(max_batch), *extra]
        self.command = command
        # Its own session: Ctrl-C at the terminal reaches this process only, which stops the
        # server itself (after the clients), instead of both racing.
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=40)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.tail.append(line.rstrip("\n"))
            self.lines.put(line)

    def wait_for_url(self, timeout: float) -> str:
        """The URL the server prints once it listens, then /health answering 200."""
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            if self.process.poll() is not None:
                raise RuntimeError(self.failure("exited with status", self.process.returncode))
            if time.monotonic() > deadline:
                raise RuntimeError(self.failure("printed no URL within", f"{timeout:.0f} s"))
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            found = URL.search(line)
            url = found.group(0).rstrip("/") if found else None
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.failure("never answered", f"{url}/health"))
            time.sleep(0.2)

    def failure(self, what: str, detail: object) -> str:
        tail = "\n".join(f"    {line}" for line in self.tail)
        return f"the server ({' '.join(self.command)}) {what} {detail}; its last output:\n{tail}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; the whole session (any child of its own too)."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.process.stdout is not None:
            self.process.stdout.close()


# ---------------------------------------------------------------------------------------------
# The clients.


@dataclass
class Level:
    """One level of load: `clients` closed-loop clients for `seconds`."""

    clients: int
    seconds: float = 0.0  # from the start until the last request ended
    requests: int = 0
    output_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        seconds = self.seconds or float("nan")
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "output_tokens": self.output_tokens,
            "requests_per_s": self.requests / seconds,
            "output_tokens_per_s": self.output_tokens / seconds,
            "ttft_p50_s": percentile(self.ttft_s, 50),
            "ttft_p95_s": percentile(self.ttft_s, 95),
            "latency_p50_s": percentile(self.latency_s, 50),
            "latency_p95_s": percentile(self.latency_s, 95),
            "errors": len(self.errors),
            "error_messages": sorted(set(self.errors)),
        }


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, linear between the two nearest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


async def one_request(
    client: Any, model: str, prompt: str, max_tokens: int, seed: int
) -> tuple[float, float, int]:
    """(time to first token, latency, output tokens) of one streamed chat request."""
    start = time.perf_counter()
    first = None
    usage = None
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=TEMPERATURE,
        seed=seed,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and any(c.delta.content or c.finish_reason for c in chunk.choices):
            first = time.perf_counter() - start  # the first text (or an immediate end)
        if chunk.usage is not None:
            usage = chunk.usage
    latency = time.perf_counter() - start
    if usage is None:
        raise RuntimeError("the stream ended without a usage chunk (include_usage was asked)")
    return first if first is not None else latency, latency, usage.completion_tokens


async def client_loop(
    client: Any, model: str, index: int, deadline: float, max_tokens: int, level: Level
) -> None:
    """One closed-loop client: its next request as soon as the last one ended."""
    sent = 0
    while time.perf_counter() < deadline:
        prompt = PROMPTS[(index + sent) % len(PROMPTS)]
        seed = 1000 * index + sent
        sent += 1
        try:
            ttft, latency, tokens = await one_request(client, model, prompt, max_tokens, seed)
        except Exception as e:  # every failure is a result to report, not a crash
            level.errors.append(f"{type(e).__name__}: {e}"[:300])
            continue
        level.requests += 1
        level.output_tokens += tokens
        level.ttft_s.append(ttft)
        level.latency_s.append(latency)


async def run_level(client: Any, model: str, level: Level, seconds: float, max_tokens: int) -> None:
    from tqdm import tqdm

    start = time.perf_counter()
    deadline = start + seconds
    tasks = [
        asyncio.create_task(client_loop(client, model, i, deadline, max_tokens, level))
        for i in range(level.clients)
    ]
    bar_format = "{desc}: {bar} {elapsed} of {total:.0f}s{postfix}"
    with tqdm(total=seconds, desc=f"{level.clients:>3} clients", bar_format=bar_format) as bar:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=0.5)
            elapsed = time.perf_counter() - start
            bar.n = min(elapsed, seconds)
            bar.set_postfix_str(
                f"{level.requests} requests, {level.output_tokens} tokens, "
                f"{len(level.errors)} errors{', finishing' if elapsed > seconds else ''}"
            )
    level.seconds = time.perf_counter() - start
    for task in tasks:
        task.result()  # a bug in the loop itself, not a failed request: let it show


async def measure(url: str, levels: list[Level], seconds: float, max_tokens: int) -> str:
    """Warm up, then every level in turn; the model's name (as /v1/models gives it)."""
    from openai import AsyncOpenAI

    # No retries: a failed request is an error to count, not one to hide.
    client = AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT
    )
    try:
        model = (await client.models.list()).data[0].id
        await one_request(client, model, PROMPTS[0], max_tokens, seed=0)  # warm-up
        for level in levels:
            await run_level(client, model, level, seconds, max_tokens)
    finally:
        await client.close()
    return model


# ---------------------------------------------------------------------------------------------
# Reporting.


def print_table(rows: list[dict[str, Any]]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:,.0f}"

    print(
        f"{'clients':>7} {'requests':>8} {'req/s':>7} {'out tok/s':>9} {'TTFT p50':>9} "
        f"{'TTFT p95':>9} {'lat p50':>8} {'lat p95':>8} {'errors':>6}   (times in ms)"
    )
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>7.2f} "
            f"{r['output_tokens_per_s']:>9.1f} {ms(r['ttft_p50_s']):>9} {ms(r['ttft_p95_s']):>9} "
            f"{ms(r['latency_p50_s']):>8} {ms(r['latency_p95_s']):>8} {r['errors']:>6}"
        )


def draw_chart(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["clients"] for r in rows]
    fig, (rate, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    measured = [r["output_tokens_per_s"] for r in rows]
    rate.plot(clients, measured, "o-", label="measured")
    one = next((r for r in rows if r["clients"] == 1), None)
    if one:
        ideal = [one["output_tokens_per_s"] * c for c in clients]
        rate.plot(clients, ideal, ":", color="grey", label="1 client's x N (linear)")
    rate.set_ylim(0, 1.3 * max([*measured, 1e-9]))  # the linear line may run off the top
    rate.set_xlabel("concurrent clients")
    rate.set_ylabel("output tokens/s (all clients)")
    rate.set_title("throughput")
    rate.legend(fontsize=8)
    p50 = [1000 * (r["ttft_p50_s"] or 0) for r in rows]
    p95 = [1000 * (r["ttft_p95_s"] or 0) for r in rows]
    ttft.plot(clients, p50, "o-", color="C1", label="p50")
    ttft.plot(clients, p95, "--", color="C1", alpha=0.5, label="p95")
    ttft.set_xlabel("concurrent clients")
    ttft.set_ylabel("time to first token (ms)")
    ttft.set_title("time to first token")
    ttft.set_ylim(0, 1.15 * max([*p50, *p95, 1e-9]))
    ttft.legend(fontsize=8)
    for ax in (rate, ttft):
        ax.set_xticks(clients)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_slug() -> str:
    """The CPU's model as a file name: "Intel(R) Xeon(R) Processor" -> "intel-xeon-processor"."""
    model = cpu_description().split(" (")[0]
    model = re.sub(r"\((R|TM|tm|r)\)", "", model)
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "cpu"


def parse_clients(text: str) -> list[int]:
    try:
        clients = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        clients = []
    if not clients or min(clients) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers >= 1, e.g. 1,4,8,16")
    return clients


def terminate_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same way out as Ctrl-C: the server is stopped in `finally`


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a run, or a model name")
    parser.add_argument("--clients", type=parse_clients, default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=30.0, help="per level of clients")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    parser.add_argument("--quantize", help="passed to the server (e.g. int4)")
    parser.add_argument("--dtype", help="passed to the server (e.g. bfloat16)")
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON, with a PNG beside (default benchmarks/results/serve-<cpu>.json)",
    )
    args = parser.parse_args()
    if args.seconds <= 0 or args.max_tokens < 1:
        parser.error("--seconds must be > 0 and --max-tokens >= 1")
    out = args.out or RESULTS / f"serve-{cpu_slug()}.json"
    extra = [f"--{name}={value}" for name in ("quantize", "dtype")
             if (value := getattr(args, name)) is not None]  # fmt: skip

    machine = cpu_description()
    start_load = load_average()
    print(f"CPU: {machine}; load average {start_load}", flush=True)
    print(
        f"model {args.model}{' ' + ' '.join(extra) if extra else ''}, server --max-batch "
        f"{args.max_batch}; {args.seconds:g} s per level, max_tokens {args.max_tokens}, "
        f"temperature {TEMPERATURE} seeded, streaming with usage; {len(PROMPTS)} prompts",
        flush=True,
    )
    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    levels = [Level(n) for n in args.clients]
    started = time.perf_counter()
    server = Server(args.model, args.max_batch, extra)
    try:
        url = server.wait_for_url(STARTUP_SECONDS)
        print(f"server at {url} after {time.perf_counter() - started:.1f} s", flush=True)
        served = asyncio.run(measure(url, levels, args.seconds, args.max_tokens))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the server", file=sys.stderr)
        return 130
    finally:
        server.stop()

    rows = [level.summary() for level in levels]
    end_load = load_average()
    print(f"\nmodel {served}; load average at the end {end_load}")
    print_table(rows)
    rate = {r["clients"]: r["output_tokens_per_s"] for r in rows}
    ratio = rate[8] / rate[1] if 1 in rate and 8 in rate and rate[1] > 0 else None
    if ratio is None:
        print("ratio 8 vs 1 streams: n/a (run with --clients holding 1 and 8)")
    else:
        verdict = "met" if ratio >= 3 else "not met"
        print(f"ratio 8 vs 1 streams: {ratio:.2f}x (target >= 3x: {verdict})")

    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine,
        "model": served,
        "server_command": server.command,
        "server_pid": server.process.pid,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "prompts": PROMPTS,
        "temperature": TEMPERATURE,
        "load_average": {"start": start_load, "end": end_load},
        "levels": rows,
        "ratio_8_vs_1": ratio,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    chart = out.with_suffix(".png")
    title = f"scratchlm serve {served} ({args.max_tokens} tokens, --max-batch {args.max_batch}); {machine}"
    draw_chart(chart, rows, title)
    print(f"results: {out}, chart: {chart}")

    failed = [(level.clients, e) for level in levels for e in sorted(set(level.errors))]
    for clients, error in failed:
        print(f"error at {clients} clients: {error}", file=sys.stderr)
    if failed:
        print(
            f"{sum(len(lv.errors) for lv in levels)} requests failed (must be 0)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
