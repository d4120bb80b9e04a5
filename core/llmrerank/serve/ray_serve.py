"""The same rerank service as a Ray Serve deployment, for clusters.

::

    from ray import serve
    from llmrerank.serve import ServeConfig
    from llmrerank.serve.ray_serve import deployment

    app = deployment(ServeConfig(backend="openai", model="gpt-4o-mini", cache="redis://redis:6379/0"),
                     autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 32})
    serve.run(app, route_prefix="/")          # or `serve run module:app` / a Serve config file

Each replica builds the app of :func:`~llmrerank.serve.app.create_app` from the settings, which
travel as JSON (the format ``--workers N`` hands its worker processes), so replicas are stateless;
give them a shared ``redis://`` cache so one replica's answers serve every other. Ray Serve's own
proxy does the HTTP; the endpoints, errors and headers are the app's. ``max_ongoing_requests``
bounds the requests one replica takes at once (the app's ``max_in_flight`` still answers 429 past
its own limit). Needs ``pip install "llmrerank[ray-serve]"`` (Ray Serve and the ``serve`` extra).
"""

from __future__ import annotations

from typing import Any

from ..errors import require
from .app import config_from_json, create_app, settings_json
from .config import ServeConfig


def deployment(
    config: ServeConfig | None = None,
    *,
    name: str = "llmrerank",
    num_replicas: int | str | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    ray_actor_options: dict[str, Any] | None = None,
) -> Any:
    """A bound Ray Serve application serving ``config`` (default: the strategies on the environment's LLM).

    ``num_replicas`` (or ``"auto"``), ``autoscaling_config``, ``max_ongoing_requests`` and
    ``ray_actor_options`` are Ray Serve's deployment options, passed as given; left None, Ray's
    defaults apply. Run the result with ``ray.serve.run``.
    """
    serve: Any = require("ray.serve", "ray-serve")
    settings = settings_json(config or ServeConfig())

    def build() -> Any:
        return create_app(config_from_json(settings))

    options: dict[str, Any] = {
        key: value
        for key, value in {
            "num_replicas": num_replicas,
            "autoscaling_config": autoscaling_config,
            "max_ongoing_requests": max_ongoing_requests,
            "ray_actor_options": ray_actor_options,
        }.items()
        if value is not None
    }
    wrapped = serve.ingress(build)(type("LLMRerankDeployment", (), {"__doc__": "llmrerank's rerank service."}))
    return serve.deployment(wrapped, name=name, **options).bind()
