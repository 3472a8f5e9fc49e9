"""Request body size limit as pure ASGI middleware (nothing is buffered to enforce it)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.errors import PROBLEM_BASE, ProblemError, problem_response


class BodyTooLargeError(ProblemError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            "Content Too Large",
            f"the request body exceeds {max_bytes} bytes",
            type_=PROBLEM_BASE + "content-too-large",
            headers={"Connection": "close"},
        )


# File uploads (ticket attachments) have their own, larger limit; the service enforces its own too.
UPLOAD_PATH = re.compile(r"^/api/v1/tickets/[^/]+/attachments/?$")


class BodySizeLimitMiddleware:
    """413 for a declared Content-Length over the limit; chunked bodies are counted as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_max_bytes: int | None = None) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.upload_max_bytes = max(upload_max_bytes or max_bytes, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = UPLOAD_PATH.match(scope["path"]) is not None
        max_bytes = self.upload_max_bytes if upload else self.default_max_bytes
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The server delivers exactly the declared length, so checking it is enough.
                if not value.isdigit():
                    response = problem_response(400, "Bad Request", "invalid Content-Length header")
                    await response(scope, receive, send)
                    return
                if int(value) > max_bytes:
                    await self._reject(scope, receive, send, max_bytes)
                    return
                await self.app(scope, receive, send)
                return
            if name == b"transfer-encoding":
                chunked = True
        if not chunked:  # neither header: the request has no body
            await self.app(scope, receive, send)
            return

        received = 0
        tripped = response_started = replaced = False

        async def counting_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    tripped = True
                    raise BodyTooLargeError(max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, replaced
            if message["type"] == "http.response.start":
                response_started = True
                if tripped:
                    # Whatever the app made of the aborted body (FastAPI says 400, a proxy 502),
                    # the client gets the real reason.
                    replaced = True
                    await self._reject(scope, receive, send, max_bytes)
                    return
            elif replaced:
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLargeError:
            if response_started:
                raise
            await self._reject(scope, receive, send, max_bytes)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        error = BodyTooLargeError(max_bytes)
        response = problem_response(
            error.status, error.title, error.detail, type_=error.type, headers=error.headers
        )
        await response(scope, receive, send)
