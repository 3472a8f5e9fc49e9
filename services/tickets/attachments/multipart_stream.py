"""A multipart/form-data body read as a stream: file bytes flow on as they arrive.

Starlette's form parser spools every file to a temporary file before the endpoint runs, with
no size limit; here the endpoint sees the file's headers first (so a wrong type is refused
before any byte is stored) and then pulls its bytes, so a limit stops the transfer early.
"""

from __future__ import annotations

import codecs
import re
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from libs.common.errors import ProblemError

MAX_FIELD_BYTES = 16 * 1024
MAX_FIELDS = 20
# RFC 7578 says not to use filename*, but some clients do; python-multipart ignores it.
_FILENAME_STAR = re.compile(rb"filename\*\s*=\s*([^;]+)", re.IGNORECASE)


def _bad_form(detail: str) -> ProblemError:
    return ProblemError(400, "Bad Request", detail, type_="https://helpdesk.dev/problems/multipart")


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; anything else is a 415 problem."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise ProblemError(
            415,
            "Unsupported Media Type",
            "the request body must be multipart/form-data with a `file` field",
            type_="https://helpdesk.dev/problems/not-multipart",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad_form("multipart/form-data without a boundary")
    return boundary


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _filename(disposition: bytes, options: dict[bytes, bytes]) -> str | None:
    match = _FILENAME_STAR.search(disposition)
    if match:  # RFC 5987: charset'language'percent-encoded
        charset, _, rest = match.group(1).strip().strip(b'"').decode("latin-1").partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=codecs.lookup(charset or "utf-8").name, errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    if b"filename" in options:
        return _decode(options[b"filename"])
    return None


class FilePart:
    """The first file of the form: its headers now, its bytes from `chunks()`."""

    def __init__(
        self, form: MultipartStream, field_name: str, filename: str, content_type: str | None
    ) -> None:
        self._form = form
        self.field_name = field_name
        self.filename = filename
        self.content_type = content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._form._next_event()
            if event is None:
                raise _bad_form("the multipart body ended inside the file")
            kind, data = event
            if kind == "end":
                return
            yield data

    async def rest_of_form(self) -> dict[str, str]:
        """Read the body to its end; the text fields of the whole form (before and after the file)."""
        return await self._form.finish()


class MultipartStream:
    """Pull-based reader over python-multipart's push parser."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes, *, max_body_bytes: int) -> None:
        self._body = body.__aiter__()
        self._max_body_bytes = max_body_bytes
        self._received = 0
        self._events: deque[tuple[str, bytes | FilePart]] = deque()
        self._body_done = False
        self._complete = False
        self._files = 0
        self.fields: dict[str, str] = {}
        # The part being parsed.
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._in_file = False
        self._field_name = ""
        self._field_data = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # -- parser callbacks (synchronous, while `write` runs) --

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._field_data = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise _bad_form("a part header is too long")

    def _on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise _bad_form('every part needs Content-Disposition: form-data; name="..."')
        name = _decode(options[b"name"])
        filename = _filename(disposition, options)
        if filename is None:
            self._in_file = False
            self._field_name = name
            if len(self.fields) >= MAX_FIELDS:
                raise _bad_form("too many form fields")
            return
        self._files += 1
        if self._files > 1:
            raise _bad_form("send one file per request")
        self._in_file = True
        content_type = self._headers.get(b"content-type")
        self._events.append(
            ("file", FilePart(self, name, filename, _decode(content_type) if content_type else None))
        )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._events.append(("data", data[start:end]))
            return
        self._field_data += data[start:end]
        if len(self._field_data) > MAX_FIELD_BYTES:
            raise _bad_form(f"form field {self._field_name!r} is too long")

    def _on_part_end(self) -> None:
        if self._in_file:
            self._events.append(("end", b""))
            self._in_file = False
        else:
            self.fields[self._field_name] = _decode(bytes(self._field_data))

    def _on_end(self) -> None:
        self._complete = True

    # -- pulling --

    async def _next_event(self) -> tuple[str, bytes | FilePart] | None:
        while not self._events:
            if self._body_done:
                return None
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._body_done = True
                self._parser.finalize()
                if not self._complete:
                    raise _bad_form("the multipart body is incomplete (no closing boundary)") from None
                continue
            self._received += len(chunk)
            if self._received > self._max_body_bytes:
                raise ProblemError(
                    413,
                    "Content Too Large",
                    f"the request body exceeds {self._max_body_bytes} bytes",
                    type_="https://helpdesk.dev/problems/attachment-too-large",
                )
            try:
                self._parser.write(chunk)
            except FormParserError:
                raise _bad_form("malformed multipart body") from None
        return self._events.popleft()  # type: ignore[return-value]

    async def next_file(self) -> FilePart | None:
        """Read up to the first file part's headers; None if the form has no file."""
        while (event := await self._next_event()) is not None:
            kind, value = event
            if kind == "file":
                assert isinstance(value, FilePart)
                return value
        return None

    async def finish(self) -> dict[str, str]:
        while (event := await self._next_event()) is not None:
            if event[0] == "file":
                raise _bad_form("send one file per request")
        return self.fields
