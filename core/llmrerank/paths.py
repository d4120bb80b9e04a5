"""Where llmrerank keeps converted models, and how it finds files shipped inside wheels."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LLMRERANK_CACHE_DIR``, else ``$XDG_CACHE_HOME/llmrerank``, else ``~/.cache/llmrerank``."""
    explicit = os.environ.get("LLMRERANK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmrerank"


def package_file(package: str, pattern: str) -> Path | None:
    """The first file matching ``pattern`` inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(pattern))
        if found:
            return found[0]
    return None
