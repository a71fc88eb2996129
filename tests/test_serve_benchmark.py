"""benchmarks/serve.py end to end, briefly: it starts `scratchlm serve` on a scripted run,
loads it with 1 and then 2 streaming clients for 2 s each, writes its JSON and PNG, and
leaves no server behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_chat import BABBLES, save_chat_run

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 12


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    # "blah blah ..." without end: every reply is exactly MAX_TOKENS tokens long.
    run = save_chat_run(tmp_path / "babble", BABBLES, block_size=256)
    out = tmp_path / "results" / "serve.json"
    done = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "serve.py"), "--model", str(run),
            "--seconds", "2", "--clients", "1,2", "--max-tokens", str(MAX_TOKENS),
            "--out", str(out),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.startswith("CPU: ")
    assert "ratio 8 vs 1 streams: n/a" in done.stdout  # no 8-client level in this run

    results = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    assert [level["clients"] for level in results["levels"]] == [1, 2]
    for level in results["levels"]:
        assert level["errors"] == 0 and level["error_messages"] == []
        assert level["requests"] >= 2
        assert level["seconds"] >= 2
        assert level["output_tokens"] == MAX_TOKENS * level["requests"]  # from the usage chunks
        assert level["output_tokens_per_s"] == pytest.approx(
            level["output_tokens"] / level["seconds"], rel=1e-3
        )
        assert 0 < level["ttft_p50_s"] <= level["ttft_p95_s"] <= level["latency_p95_s"]
        assert level["ttft_p50_s"] < level["latency_p50_s"]
    assert results["ratio_8_vs_1"] is None
    assert str(run) in results["server_command"]
    with pytest.raises(ProcessLookupError):  # stopped, and reaped by the benchmark
        os.kill(results["server_pid"], 0)
