"""Docker's API over its unix socket, with the standard library's http.client: the few GETs and
the event stream the watcher needs. requests (with requests-unixsocket) did the same and cost the
plugin's worker 4.5 MB of memory for its imports (urllib3, charset-normalizer, idna, certifi);
http.client decodes chunked streams itself.

The interface is the small part of a requests session the watcher uses (get → a response with
raise_for_status, json, iter_lines, usable as a context manager), which the unit tests' fake
Docker implements too.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Iterator
from urllib.parse import unquote, urlsplit

MAX_LINE = 1 << 20  # one event, one JSON document: refused beyond this


class DockerApiError(OSError):
    """dockerd did not answer, or answered with an HTTP error (`status`, else None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Connection(http.client.HTTPConnection):
    def __init__(self, path: str, connect_timeout: float, read_timeout: float | None):
        super().__init__("localhost", timeout=connect_timeout)
        self._path, self._read_timeout = path, read_timeout

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
            sock.settimeout(self._read_timeout)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Response:
    def __init__(self, conn: _Connection, resp: http.client.HTTPResponse, path: str):
        self._conn, self._resp, self.path = conn, resp, path
        self.status_code = resp.status

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            self.close()
            raise DockerApiError(f"GET {self.path}: HTTP {self.status_code}", self.status_code)

    def json(self):
        try:
            return json.loads(self._resp.read())
        finally:
            self.close()

    def iter_lines(self) -> Iterator[bytes]:
        """Lines of a streamed body, as they arrive; ends (raising) when the stream does."""
        while True:
            line = self._resp.readline(MAX_LINE + 1)
            if not line:
                raise DockerApiError(f"GET {self.path}: the stream ended")
            if len(line) > MAX_LINE:
                raise DockerApiError(f"GET {self.path}: a line longer than {MAX_LINE} bytes")
            yield line.rstrip(b"\r\n")


class UnixSession:
    """get(url) for http+unix://<quoted socket path>/<path> URLs, as the watcher builds them."""

    def get(self, url: str, timeout=5.0, stream: bool = False) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "http+unix":
            raise DockerApiError(f"not a unix-socket URL: {url[:80]!r}")
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = _Connection(unquote(parts.netloc), connect, read)
        try:
            conn.request("GET", path, headers={"Host": "docker"})
            return Response(conn, conn.getresponse(), parts.path)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise DockerApiError(f"GET {parts.path}: {e}") from None
