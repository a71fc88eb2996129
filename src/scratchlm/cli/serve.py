"""`scratchlm serve`: an OpenAI-compatible server for a run or a pretrained model.

    scratchlm serve runs/tiny                      # http://127.0.0.1:8000, chat page at /
    scratchlm serve smollm2-135m-instruct --port 0 --api-key KEY --quantize int8

The server itself is scratchlm.serve (server.py starts it, app.py answers requests).
"""

from __future__ import annotations

import argparse
from typing import Any

from scratchlm.cli.weights_options import add_weights_options


def register(commands: Any) -> None:
    """Add the `serve` subparser to `commands` (argparse's subparsers action)."""
    p = commands.add_parser("serve", help="serve a model over HTTP: the OpenAI API and a chat page")
    p.add_argument(
        "source",
        metavar="RUN",
        help="a run folder, or a pretrained model (smollm2-135m-instruct: downloaded and "
        "imported into the cache on first use)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: this machine only; 0.0.0.0: every network)",
    )
    p.add_argument("--port", type=int, default=8000, help="0: any free port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help="requests to /v1 must send `Authorization: Bearer KEY` (the page asks for it)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="replies decoded together at most (a request with n choices is n; default 8)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="replies waiting for a free row at most; past that, requests are answered 503 "
        "(default 64)",
    )
    p.add_argument(
        "--max-n", type=int, default=8, help="the most choices (n) one request may ask for"
    )
    add_weights_options(p)
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from scratchlm.serve.server import serve

    serve(
        args.source,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_n=args.max_n,
        checkpoint=args.checkpoint,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
    )
