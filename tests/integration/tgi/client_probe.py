"""Runs inside .venv-tgi: the real `text-generation` client (0.7.0) against a TGI-style URL.

Reads a JSON list of calls on stdin, prints a JSON list of results on stdout. Each call is
{"route": "client" | "generate" | "tokenize" | "info", "inputs": str, "kwargs": {...},
"headers": {...} (optional)}:
"client" is `text_generation.Client(url).generate(inputs, **kwargs)` (TGI's compat route `/`);
"generate" posts to /generate and parses the body with the client's own `Response` model.
A result is the parsed model as JSON, or {"error": exception type, "message": str}.

    .venv-tgi/bin/python tests/integration/tgi/client_probe.py http://127.0.0.1:8080 < calls.json
"""

from __future__ import annotations

import json
import sys

import requests
from text_generation import Client
from text_generation.errors import parse_error
from text_generation.types import Parameters, Request, Response


def run(url: str, call: dict) -> object:
    route, kwargs, headers = call["route"], call.get("kwargs", {}), call.get("headers")
    if route == "client":
        client = Client(url, headers=headers, timeout=120)
        return client.generate(call["inputs"], **kwargs).model_dump(mode="json")
    if route == "generate":
        body = Request(inputs=call["inputs"], parameters=Parameters(details=True, **kwargs))
        resp = requests.post(
            f"{url}/generate", json=body.model_dump(), headers=headers, timeout=120
        )
        if resp.status_code != 200:
            raise parse_error(resp.status_code, resp.json())
        return Response(**resp.json()).model_dump(mode="json")
    if route == "tokenize":
        resp = requests.post(
            f"{url}/tokenize", json={"inputs": call["inputs"]}, headers=headers, timeout=60
        )
        return {"status": resp.status_code, "body": resp.json()}
    if route == "info":
        resp = requests.get(f"{url}/info", headers=headers, timeout=60)
        return {"status": resp.status_code, "body": resp.json()}
    raise ValueError(f"unknown route {route!r}")


def main() -> None:
    results = []
    for call in json.load(sys.stdin):
        try:
            results.append(run(sys.argv[1], call))
        except Exception as exc:  # reported to the test, which asserts on the type
            results.append({"error": type(exc).__name__, "message": str(exc)})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
