"""``GET /openapi.json``: an OpenAPI 3.1 document of every route the app serves.

The paths come from the app's router at request time, so a route added anywhere is documented
without touching this file; ``openapi_schemas.OPERATIONS`` adds hand-written request and response
schemas where it has them. All routes but ``/health`` sit behind the bearer API key when the
server has one (see ``auth_middleware``).
"""

from __future__ import annotations

import inspect
import re

import orjson
from aiohttp import web

from radixserve import __version__
from radixserve.server.openapi_schemas import OPERATIONS, SCHEMAS, ref
from radixserve.server.state import STATE

_PUBLIC_PATHS = frozenset({"/health"})  # auth_middleware lets these through without a key
_PATH_PARAM = re.compile(r"{([^}:]+)}")
_ERROR_STATUSES = {"400": "invalid request", "401": "missing or wrong API key", "503": "model loading"}


def add_openapi_route(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of this app."""
    return web.Response(body=orjson.dumps(build_document(request.app)), content_type="application/json")


def build_document(app: web.Application) -> dict:
    """The OpenAPI 3.1 document: one operation per (method, path) the router serves, HEAD excepted."""
    paths: dict[str, dict] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "*") or resource is None:
            continue  # aiohttp adds a HEAD route for every GET
        path = resource.canonical
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, path, route.handler)
    state = app[STATE]
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "radixserve",
            "version": __version__,
            "description": f"OpenAI-compatible and SGLang-native LLM serving of {state.model_name}.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "--api-key"}},
        },
    }
    document["security"] = [{"bearerAuth": []}] if state.args.api_key else []
    return document


def _operation(method: str, path: str, handler) -> dict:
    spec = OPERATIONS.get((method, path))
    operation = {
        "operationId": _operation_id(method, path),
        "summary": spec["summary"] if spec else _first_doc_line(handler),
    }
    names = _PATH_PARAM.findall(path)
    if names:
        operation["parameters"] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
    if spec:
        operation.update({k: v for k, v in spec.items() if k != "summary"})
    responses = dict(operation.get("responses") or {"200": {"description": "OK"}})
    for status, description in _ERROR_STATUSES.items():
        if status == "401" and path in _PUBLIC_PATHS:
            continue
        responses.setdefault(
            status, {"description": description, "content": {"application/json": {"schema": ref("Error")}}}
        )
    operation["responses"] = responses
    if path in _PUBLIC_PATHS:
        operation["security"] = []
    return operation


def _operation_id(method: str, path: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{slug}"


def _first_doc_line(handler) -> str:
    doc = inspect.getdoc(handler) or ""
    return doc.splitlines()[0] if doc else getattr(handler, "__name__", "endpoint")
