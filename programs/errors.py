"""The errors programs raise. Each message is one line a user can act on; the command-line entry points print it
and exit with status 2."""

from __future__ import annotations


class ProgramError(Exception):
    """Base of every error a program reports to its user."""


class InvalidInput(ProgramError, ValueError):
    """An argument is unusable (empty question, a limit below 1, a bad ZoomR setting)."""


class ServerUnreachable(ProgramError, ConnectionError):
    """Nothing answers at the server URL."""


class ServerRequestError(ProgramError):
    """The server answered a request with an error (for example HTTP 400 for a bad ``zoomr_*`` value)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def server_error_message(body) -> str:
    """The human part of an SGLang error body (``{"error": {"message": ...}}``, ``{"message": ...}`` or text)."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if "detail" in body:
            return str(body["detail"])
        return str(err)
    return str(body).strip()
