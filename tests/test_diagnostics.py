"""The diagnostic codes have one registry (llmrerank.diagnostics): what the code emits, what the README
lists and what batch and eval read all agree with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from llmrerank import diagnostics
from llmrerank.diagnostics import CODES, PROBLEM_CODES, ROUTINE_CODES, UNREADABLE_CODES

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "llmrerank"


def emitted_codes() -> dict[str, str]:
    """Each code the core passes to ``Diagnostic`` (a literal or a registry constant), with where."""
    found: dict[str, str] = {}
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Diagnostic" and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found[first.value] = f"{path.relative_to(ROOT)}:{node.lineno}"
            elif isinstance(first, ast.Name) and first.id.isupper():
                found[getattr(diagnostics, first.id)] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_code_the_core_emits_is_registered() -> None:
    unknown = {code: where for code, where in emitted_codes().items() if code not in CODES}
    assert unknown == {}


def test_every_registered_code_is_emitted_somewhere() -> None:
    # pointwise labels its scores through read_score's return value, not a Diagnostic(...) literal
    assert set(CODES) - set(emitted_codes()) <= {"score_from_logprobs"}


def test_the_constants_are_the_wire_values() -> None:
    constants = {name: value for name, value in vars(diagnostics).items() if name.isupper() and isinstance(value, str)}
    assert all(value == name.lower() for name, value in constants.items())
    assert set(constants.values()) == set(CODES)


def test_the_readme_lists_exactly_the_registered_codes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("- `result.diagnostics` (and per item)")
    bullet = readme[start : readme.index("\n\n", start)]
    listed = set(re.findall(r"`([a-z][a-z_]+)`", bullet))
    assert listed == set(CODES)


def test_the_code_sets_are_made_of_registered_codes() -> None:
    assert set(PROBLEM_CODES) | UNREADABLE_CODES | ROUTINE_CODES <= set(CODES)
    assert set(PROBLEM_CODES) >= UNREADABLE_CODES  # an unreadable answer is a reason a batch row names
