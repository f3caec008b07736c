"""The one error type the service answers with: an HTTP status and a JSON body
``{"error": {"kind": ..., "message": ...}}`` whose message is one line naming the problem."""

from __future__ import annotations


class ApiError(Exception):
    """A client-facing failure; ``kind`` is a short stable code clients may branch on."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = " ".join(str(message).split())  # one line, whatever the cause said

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message}}
