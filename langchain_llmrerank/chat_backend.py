"""An llmrerank :class:`~llmrerank.Backend` over any LangChain chat model."""

from __future__ import annotations

import contextvars
from typing import Any

from langchain_core.language_models import BaseChatModel, SimpleChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from llmrerank import Completion, Prompt
from llmrerank.adaptive import DEFAULT_MAX_CONCURRENCY
from llmrerank.backends.base import token_count
from llmrerank.backends.framework import FrameworkBackend

CALL_CONFIG: contextvars.ContextVar[RunnableConfig | None] = contextvars.ContextVar(
    "langchain_llmrerank_call_config", default=None
)
"""The RunnableConfig (callbacks, tags) of the compression call in progress."""


def native_async(model: BaseChatModel) -> bool:
    """Whether ``model`` has an async path of its own; otherwise LangChain's ``ainvoke`` runs its
    blocking ``_generate`` in the event loop's default executor."""
    return type(model)._agenerate not in (BaseChatModel._agenerate, SimpleChatModel._agenerate)


class ChatModelBackend(FrameworkBackend):
    """Answers llmrerank prompts with a LangChain chat model (``ChatOpenAI``, ``ChatAnthropic``, fakes...).

    Each prompt becomes ``[SystemMessage, HumanMessage]``; the answer is the reply's text and token use
    comes from ``usage_metadata`` when the model reports it. Log-probabilities are not read, so pointwise
    scoring uses generated scores. A blocking compression calls the model's ``invoke``, and so does
    async code for a model with only a blocking ``_generate`` (no async path of its own), each call in
    this backend's own threads (``max_workers``; see :class:`~llmrerank.backends.framework.FrameworkBackend`).
    The model's own settings (temperature, max tokens, retries) apply; the callbacks of the compression
    call in progress are passed on in the model's ``RunnableConfig``.
    """

    name = "langchain"

    def __init__(self, model: BaseChatModel, *, max_workers: int = DEFAULT_MAX_CONCURRENCY) -> None:
        super().__init__(max_workers=max_workers)
        self.chat_model = model
        self.model = str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)
        self.name = f"langchain:{model._llm_type}"

    def _messages(self, prompt: Prompt) -> list[BaseMessage]:
        messages: list[BaseMessage] = [HumanMessage(content=prompt.user)]
        if prompt.system:
            messages.insert(0, SystemMessage(content=prompt.system))
        return messages

    def calls_blocking(self) -> bool:
        """In a blocking compression, and for a model with no async path of its own (its ``ainvoke``
        would run ``invoke`` in the event loop's default executor)."""
        return super().calls_blocking() or not native_async(self.chat_model)

    async def generate(self, prompt: Prompt) -> Completion:
        """One chat call (``invoke`` in a worker thread when :meth:`calls_blocking`)."""
        config = CALL_CONFIG.get() or RunnableConfig()
        config = RunnableConfig(**{**config, "tags": [*config.get("tags", []), "llmrerank"]})
        reply = await self.call(self.chat_model.invoke, self.chat_model.ainvoke, self._messages(prompt), config)
        usage: Any = getattr(reply, "usage_metadata", None) or {}
        return Completion(
            text=reply.text,
            prompt_tokens=token_count(usage.get("input_tokens", 0)),
            completion_tokens=token_count(usage.get("output_tokens", 0)),
        )

    def __repr__(self) -> str:
        return f"ChatModelBackend({type(self.chat_model).__name__}, model={self.model!r})"
