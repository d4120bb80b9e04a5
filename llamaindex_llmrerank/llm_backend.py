"""An llmrerank :class:`~llmrerank.Backend` over any LlamaIndex ``LLM``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.llms import LLM

from llmrerank import Completion, Prompt
from llmrerank.adaptive import DEFAULT_MAX_CONCURRENCY
from llmrerank.backends.base import token_count
from llmrerank.backends.framework import FrameworkBackend


class LlamaIndexLLMBackend(FrameworkBackend):
    """Answers llmrerank prompts with a LlamaIndex ``LLM`` (``OpenAI``, ``Anthropic``, ``Ollama``, ...).

    Each prompt becomes a system and a user :class:`ChatMessage` sent with ``achat`` (``chat`` from a
    blocking caller, in this backend's own threads: :class:`~llmrerank.backends.framework.FrameworkBackend`);
    completion-only LLMs get them through their ``messages_to_prompt``. The answer is the message
    text; token use is read from the response when the integration reports it. Log-probabilities are
    not read, so pointwise scoring uses generated scores. The LLM's own settings (temperature, max
    tokens, retries) apply.
    """

    name = "llamaindex"

    def __init__(self, llm: LLM, *, max_workers: int = DEFAULT_MAX_CONCURRENCY) -> None:
        super().__init__(max_workers=max_workers)
        self.llm = llm
        self.model = str(llm.metadata.model_name or type(llm).__name__)
        self.name = f"llamaindex:{llm.class_name()}"

    async def generate(self, prompt: Prompt) -> Completion:
        """One chat call."""
        messages = [ChatMessage(role=MessageRole.USER, content=prompt.user)]
        if prompt.system:
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=prompt.system))
        response = await self.call(self.llm.chat, self.llm.achat, messages)
        prompt_tokens, completion_tokens = _usage(response)
        return Completion(
            text=response.message.content or "", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    def __repr__(self) -> str:
        return f"LlamaIndexLLMBackend({type(self.llm).__name__}, model={self.model!r})"


def _usage(response: ChatResponse) -> tuple[int, int]:
    """(prompt, completion) tokens from ``additional_kwargs`` or the raw response's ``usage``."""
    sources: list[Any] = [response.additional_kwargs]
    raw = response.raw
    usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    if usage is not None:
        sources.append(usage)
    for source in sources:
        get = source.get if isinstance(source, Mapping) else lambda key, s=source: getattr(s, key, None)
        prompt = get("prompt_tokens") or get("input_tokens")
        completion = get("completion_tokens") or get("output_tokens")
        if isinstance(prompt, int) or isinstance(completion, int):
            return token_count(prompt), token_count(completion)
    return 0, 0
