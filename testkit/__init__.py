"""The project's own test support: loopback servers and the prompt-injection set (not shipped in the wheel).

- :mod:`testkit.server`: :class:`~testkit.server.FakeLLMServer`, an HTTP server on 127.0.0.1 that
  speaks the OpenAI and Anthropic wire formats (and imitates llama.cpp, vLLM, Ollama and reasoning
  models), so the real SDKs run unchanged; its responders and :class:`~testkit.server.BiasedJudge`.
- :mod:`testkit.batch_server`: :class:`~testkit.batch_server.FakeBatchServer`, the providers' batch APIs.
- :mod:`testkit.injection`: the prompt-injection cases and a gullible scripted LLM.

The tests, the benchmarks and ``.ci/wheel`` import it from the repository root (pytest's
``pythonpath``; each benchmark puts the root on ``sys.path``). The public test double users get with
the package is :class:`llmrerank.testing.FakeBackend`.
"""
