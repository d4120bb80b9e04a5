"""``LLMRerankPostprocessor``: llmrerank as a LlamaIndex node postprocessor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle
from pydantic import AliasChoices, InstanceOf

from llmrerank import (
    Backend,
    InvalidInputError,
    RerankResult,
    Strategy,
)
from llmrerank.adapter_options import setting
from llmrerank.backends.framework import blocking
from llmrerank.driver import OnError
from llmrerank.options import LazyReranker, RerankerSlot
from llmrerank.protocol import Context

from .llm_backend import LlamaIndexLLMBackend

dispatcher = get_dispatcher(__name__)

RESULT_KEY = "llmrerank_result"
"""Key of :meth:`llmrerank.RerankResult.summary` in the ``CBEventType.RERANKING`` end payload."""


class LLMRerankEndEvent(ReRankEndEvent):
    """``ReRankEndEvent`` with what the rerank did: :meth:`llmrerank.RerankResult.summary`
    (status, degraded and why, usage with calls and tokens, diagnostics)."""

    result: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "LLMRerankEndEvent"


def _plus(keys: list[str], fields: dict[str, Any]) -> list[str]:
    return [*keys, *(k for k in fields if k not in keys)]


def text_limit(strategy: Strategy, backend: Backend) -> int | None:
    """The most characters of a document the LLM prompts of ``strategy`` keep with ``backend`` (a hybrid
    strategy without ``llm`` runs the backend's preferred one); None: no limit known."""
    return strategy.doc_chars(Context(preferred_strategy=backend.preferred_strategy))


def node_text(node: BaseNode, mode: MetadataMode, limit: int | None) -> str:
    """The node's text for the LLM: its metadata (for ``mode``) cut first, so that the content itself
    always fits in ``limit`` characters when it can; the strategy cuts the content only when it alone
    is longer."""
    full = node.get_content(metadata_mode=mode)
    if limit is None or len(full) <= limit:  # it fits: LlamaIndex's own rendering
        return full
    content = node.get_content(metadata_mode=MetadataMode.NONE)
    metadata = node.get_metadata_str(mode=mode) if mode != MetadataMode.NONE else ""
    if not metadata:
        return content
    template = getattr(node, "text_template", "{metadata_str}\n\n{content}")
    room = limit - len(template.format(metadata_str="", content=content))
    if room < min(len(metadata), 20):  # no room for a useful part of it
        return content
    return template.format(metadata_str=metadata[:room].rstrip(), content=content)


class LLMRerankPostprocessor(LazyReranker, BaseNodePostprocessor):
    """Rerank retrieved nodes with an LLM; for query engines' ``node_postprocessors``.

    >>> engine = index.as_query_engine(
    ...     similarity_top_k=20, node_postprocessors=[LLMRerankPostprocessor(top_n=5)]
    ... )                                                                           # doctest: +SKIP

    With no ``backend`` the LLM comes from the environment (``OPENAI_API_KEY``, then
    ``ANTHROPIC_API_KEY``, else the small local demo model; see :func:`llmrerank.default_backend`),
    not from ``Settings.llm``: pass ``backend=Settings.llm`` to rerank with that one.

    Returns new :class:`NodeWithScore` objects, best first, over copies of the nodes (the input list
    and nodes are left as they are). ``score`` is the model's score where it gave one; otherwise (a
    rank-only strategy such as listwise, or a node no answer placed) the retriever's score stays, so
    a following ``SimilarityPostprocessor`` keeps working. Each node's metadata says what happened
    (:meth:`llmrerank.RerankResult.metadata`: ``relevance_score``, ``rerank_rank``,
    ``rerank_score_kind``, ``rerank_fallback``, ``rerank_degraded``; with ``keep_retrieval_score``
    also ``retrieval_score``); these keys are excluded from the text the LLM and the embedder see.

    Emits ``ReRankStartEvent`` and :class:`LLMRerankEndEvent` (a ``ReRankEndEvent`` that also carries
    :meth:`~llmrerank.RerankResult.summary`: usage, status, diagnostics), and a
    ``CBEventType.RERANKING`` callback event whose end payload holds the same summary under
    ``"llmrerank_result"``. An empty list gives ``[]`` without calling the LLM; a missing query raises
    :class:`~llmrerank.InvalidInputError` (a ``ValueError``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    framework_backend: ClassVar[Callable[..., Backend]] = LlamaIndexLLMBackend

    # Defaults, bounds and docs (the fields' descriptions): llmrerank.adapter_options, shared with LangChain.
    # Objects are left out of to_dict()/to_json() (exclude=True), which could not write them.
    strategy: str | InstanceOf[Strategy] | None = setting("strategy")
    backend: InstanceOf[Backend] | InstanceOf[LLM] | None = Field(
        default=None, exclude=True, validation_alias=AliasChoices("backend", "llm")
    )
    """The LLM: an llmrerank backend (``OpenAIBackend(...)``, ``AnthropicBackend(...)``, ``LocalBackend()``)
    or any LlamaIndex ``LLM``; also accepted as ``llm=``, the name LlamaIndex's own rerankers use. None
    picks one from the environment (:func:`llmrerank.default_backend`), not ``Settings.llm``."""
    model: str | None = setting("model")
    top_n: int | None = setting("top_n")
    domain: str | None = setting("domain")
    system_prompt: str | None = setting("system_prompt")
    template: str | None = setting("template")
    metadata_mode: MetadataMode = MetadataMode.LLM
    """Which node metadata goes into the text the LLM judges (as for answer synthesis by default)."""
    max_concurrency: int = setting("max_concurrency")
    on_error: OnError = setting("on_error")
    deadline: float | None = setting("deadline")
    cache: Any = setting("cache", exclude=True)
    min_score: float | None = setting("min_score")
    keep_retrieval_score: bool = False
    """Keep the retriever's score in ``metadata["retrieval_score"]``, as ``SentenceTransformerRerank`` does."""
    fusion: Any = setting("fusion", exclude=True)
    calibration: Any = setting("calibration", exclude=True)
    min_probability: float | None = setting("min_probability")
    diversity: Any = setting("diversity", exclude=True)
    dedup: Any = setting("dedup", exclude=True)

    _slot: RerankerSlot = PrivateAttr(default_factory=lambda: RerankerSlot())

    @classmethod
    def class_name(cls) -> str:
        """The LlamaIndex component name."""
        return "LLMRerankPostprocessor"

    def _start(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[str, list[str], list[float | None] | None]:
        """The query, the nodes' texts for the LLM and their retriever scores (None without fusion)."""
        if query_bundle is None:
            raise InvalidInputError("LLMRerankPostprocessor needs the query: pass query_bundle or query_str")
        if not nodes:
            return query_bundle.query_str, [], None
        reranker = self.reranker
        limit = text_limit(reranker.strategy, reranker.backend)
        texts = [node_text(n.node, self.metadata_mode, limit) for n in nodes]
        return query_bundle.query_str, texts, reranker.first_stage_scores(nodes)

    def _event_payload(self, nodes: list[NodeWithScore], query: str, model_name: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n or len(nodes),
        }

    def _ranked(self, nodes: list[NodeWithScore], result: RerankResult[Any]) -> list[NodeWithScore]:
        ranked = []
        for item in result:
            source = nodes[item.index]
            fields = result.metadata(item)
            if self.keep_retrieval_score:
                fields["retrieval_score"] = source.score
            node = source.node.model_copy()
            node.metadata = {**source.node.metadata, **fields}
            node.excluded_llm_metadata_keys = _plus(source.node.excluded_llm_metadata_keys, fields)
            node.excluded_embed_metadata_keys = _plus(source.node.excluded_embed_metadata_keys, fields)
            score = item.score if item.score is not None else source.score
            ranked.append(NodeWithScore(node=node, score=score))
        return ranked

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, query: str
    ) -> Iterator[Callable[[RerankResult[Any]], list[NodeWithScore]]]:
        """Emit the rerank start/end events and the callback event around one rerank.

        Yields the function that turns the result into the new nodes and records them as the end.
        """
        model_name = self.reranker.backend.model
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n or len(nodes), model_name=model_name)
        )
        ranked: list[NodeWithScore] = []
        summary: dict[str, Any] = {}
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._event_payload(nodes, query, model_name)
        ) as event:

            def finish(result: RerankResult[Any]) -> list[NodeWithScore]:
                ranked.extend(self._ranked(nodes, result))
                summary.update(result.summary())
                event.on_end(payload={EventPayload.NODES: ranked, RESULT_KEY: summary})
                return ranked

            yield finish
        dispatcher.event(LLMRerankEndEvent(nodes=ranked, result=summary))

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts, scores = self._start(nodes, query_bundle)
        if not nodes:
            return []
        reranker = self.reranker
        with self._reranking(nodes, query_bundle, query) as finish:
            return finish(blocking(lambda: reranker.rerank(query, texts, self.top_n, first_stage_scores=scores)))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts, scores = self._start(nodes, query_bundle)
        if not nodes:
            return []
        with self._reranking(nodes, query_bundle, query) as finish:
            return finish(await self.reranker.arerank(query, texts, self.top_n, first_stage_scores=scores))
