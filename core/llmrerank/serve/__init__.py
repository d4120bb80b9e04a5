"""Serve llmrerank behind the rerank APIs clients already speak: Cohere v1/v2, Jina and TEI.

::

    llmrerank serve --port 8080 --backend openai --model gpt-4o-mini --api-key secret

    import cohere
    co = cohere.ClientV2("secret", base_url="http://127.0.0.1:8080")
    co.rerank(model="listwise", query="what is BM25?", documents=["...", "..."], top_n=3)

:func:`create_app` builds the ASGI app (Starlette; mount it in your own app or run it with
uvicorn); :class:`ServeConfig` and :class:`Preset` say what it serves (:mod:`.config`);
:mod:`.wire` reads and writes each API's JSON. This package sits at the top of llmrerank beside
the CLI: nothing in the core imports it. Needs ``pip install "llmrerank[serve]"``.
"""

from __future__ import annotations

from .config import API_KEY_ENV, DEFAULT_MODEL, Preset, ServeConfig, load_config, read_api_keys

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MODEL",
    "Preset",
    "ServeConfig",
    "create_app",
    "load_config",
    "read_api_keys",
    "serve_in_thread",
]


def __getattr__(name: str) -> object:
    # The app needs starlette (the serve extra); the settings do not.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve_in_thread":
        from .runner import serve_in_thread

        return serve_in_thread
    raise AttributeError(f"module 'llmrerank.serve' has no attribute {name!r}")
