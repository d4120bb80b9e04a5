"""An llmrerank :class:`~llmrerank.Backend` over any LangChain chat model."""

from __future__ import annotations

import contextvars
from typing import Any

from langchain_core.language_models import BaseChatModel, SimpleChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from llmrerank import Backend, Completion, Prompt
from llmrerank.adaptive import DEFAULT_MAX_CONCURRENCY
from llmrerank.backends.base import WorkerThreads, token_count

CALL_CONFIG: contextvars.ContextVar[RunnableConfig | None] = contextvars.ContextVar(
    "langchain_llmrerank_call_config", default=None
)
"""The RunnableConfig (callbacks, tags) of the compression call in progress."""

SYNC_CALLS: contextvars.ContextVar[bool] = contextvars.ContextVar("langchain_llmrerank_sync_calls", default=False)
"""True inside a blocking compression: the model's blocking ``invoke`` is used, each call in a worker thread.

Chat models cache their async HTTP clients per model object, bound to the event loop that made them; the
blocking API of llmrerank runs on its own background loop, so a blocking caller gets the model's blocking
path (the one its own code would use) instead.
"""


def native_async(model: BaseChatModel) -> bool:
    """Whether ``model`` has an async path of its own; otherwise LangChain's ``ainvoke`` runs its
    blocking ``_generate`` in the event loop's default executor."""
    return type(model)._agenerate not in (BaseChatModel._agenerate, SimpleChatModel._agenerate)


class ChatModelBackend(Backend):
    """Answers llmrerank prompts with a LangChain chat model (``ChatOpenAI``, ``ChatAnthropic``, fakes...).

    Each prompt becomes ``[SystemMessage, HumanMessage]``; the answer is the reply's text and token use
    comes from ``usage_metadata`` when the model reports it. Log-probabilities are not read, so pointwise
    scoring uses generated scores. A model with only a blocking ``_generate`` (no async path of its own)
    is called with ``invoke`` in this backend's own threads (``max_workers``), in async code too. The
    model's own settings (temperature, max tokens, retries) apply; the callbacks of the compression call
    in progress are passed on in the model's ``RunnableConfig``.
    """

    name = "langchain"

    def __init__(self, model: BaseChatModel, *, max_workers: int = DEFAULT_MAX_CONCURRENCY) -> None:
        self.chat_model = model
        self._threads = WorkerThreads(max_workers)
        """Threads for blocking calls (``max_workers``: the reranker's ``max_concurrency``)."""
        self.model = str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)
        self.name = f"langchain:{model._llm_type}"

    def _messages(self, prompt: Prompt) -> list[BaseMessage]:
        messages: list[BaseMessage] = [HumanMessage(content=prompt.user)]
        if prompt.system:
            messages.insert(0, SystemMessage(content=prompt.system))
        return messages

    async def generate(self, prompt: Prompt) -> Completion:
        """One chat call; blocking ``invoke`` in a worker thread when the caller is blocking or the model
        has no async path of its own."""
        config = CALL_CONFIG.get() or RunnableConfig()
        config = RunnableConfig(**{**config, "tags": [*config.get("tags", []), "llmrerank"]})
        if SYNC_CALLS.get() or not native_async(self.chat_model):
            # The call runs in a copy of this context, so nested runs still see their parent run.
            # A model without its own async path would run in the loop's default executor
            # (cpus + 4 threads for the whole process), capping the calls below max_concurrency.
            reply = await self._threads.run(self.chat_model.invoke, self._messages(prompt), config)
        else:
            reply = await self.chat_model.ainvoke(self._messages(prompt), config)
        usage: Any = getattr(reply, "usage_metadata", None) or {}
        return Completion(
            text=reply.text,
            prompt_tokens=token_count(usage.get("input_tokens", 0)),
            completion_tokens=token_count(usage.get("output_tokens", 0)),
        )

    async def aclose(self) -> None:
        """Let the blocking calls' threads end (the chat model itself is the caller's)."""
        self._threads.shutdown()

    def __repr__(self) -> str:
        return f"ChatModelBackend({type(self.chat_model).__name__}, model={self.model!r})"
