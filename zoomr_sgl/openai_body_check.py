"""A check of OpenAI request bodies before SGLang's pydantic models read them: the shapes those models' own
validators assume without checking, which SGLang 0.5.17 answers with an HTTP 500.

Contract:
- ``OpenAIBodyCheck(app)`` is an ASGI middleware. For ``POST`` to a path of ``CHECKED`` it reads the whole body,
  and if it parses as a JSON object it hands it to ``request_validation.check_openai_body(path, body)``. A
  ``ValueError`` from there is answered here with HTTP 400 and an OpenAI error object
  (``{"object": "error", "message": ..., "type": "BadRequestError", "param": null, "code": 400}``, SGLang's own
  shape), and the request goes no further. Otherwise the app gets the request with the same body, replayed as one
  message. A body that is not JSON goes on unread by the check: SGLang's own 400 answers it.
- Every other request passes through untouched (no body is read).
"""

from __future__ import annotations

import orjson

from zoomr_sgl import request_validation

CHECKED = ("/v1/chat/completions", "/v1/completions")


class OpenAIBodyCheck:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in CHECKED:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message.get("type") != "http.request":  # the client went away: nothing to check or answer
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        error = _problem(scope["path"], body)
        if error is not None:
            payload = orjson.dumps({"object": "error", "message": error, "type": "BadRequestError", "param": None,
                                    "code": 400})
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _problem(path: str, body: bytes) -> str | None:
    """The check's message for this body, or None (not JSON, or nothing wrong)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    try:
        request_validation.check_openai_body(path, parsed)
    except ValueError as e:
        return str(e)
    return None
