"""Code listings by symbol: `module:qualname` to the exact lines of the live source.

    listing = find_listing("scratchlm.model.gpt:CausalSelfAttention.forward", source_root)
    listing.path, listing.first_line, listing.source

The source is read from the files (parsed with `ast`, never imported), so a book built from a
changed tree shows the changed code, and a listing can never drift from the file it names.
Line ranges are never used: a symbol moves with the code.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.errors import ScratchLMError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the scratchlm package folder


@dataclass(frozen=True)
class Listing:
    symbol: str
    path: str  # relative to the package's parent: scratchlm/model/gpt.py
    first_line: int
    last_line: int
    source: str  # dedented, decorators included


def find_listing(symbol: str, source_root: Path = PACKAGE_ROOT) -> Listing:
    """The source of `symbol` ("scratchlm.model.gpt:GPT.forward") in the package at
    source_root (a folder named scratchlm)."""
    module, _, qualname = symbol.partition(":")
    parts = module.split(".")
    if parts[0] != "scratchlm" or not qualname:
        raise ScratchLMError(f"listing {symbol!r}: give it as scratchlm.module:Qualified.name")
    base = source_root.joinpath(*parts[1:])
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    if not path.is_file():
        raise ScratchLMError(f"listing {symbol!r}: no module file {path}")
    text = path.read_text(encoding="utf-8")
    node: ast.AST = ast.parse(text)
    for name in qualname.split("."):
        found = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and child.name == name
        ]
        if not found:
            raise ScratchLMError(f"listing {symbol!r}: {path} has no {qualname}")
        node = found[0]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    last = node.end_lineno or node.lineno
    lines = text.splitlines()[first - 1 : last]
    relative = path.relative_to(source_root.parent).as_posix()
    return Listing(symbol, relative, first, last, textwrap.dedent("\n".join(lines)))
