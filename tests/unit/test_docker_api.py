"""plugin/docker/api.py against a real HTTP server on a unix socket (the standard library's):
JSON GETs, HTTP errors, and a chunked event stream read line by line as it arrives."""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import threading
from urllib.parse import quote

import pytest

from plugin.docker.api import DockerApiError, UnixSession


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/containers/json":
            body = json.dumps([{"Id": "a" * 64}]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/events"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in range(3):
                line = json.dumps({"Type": "container", "Action": "start", "n": n}).encode() + b"\n"
                # one event split over two chunks, as a stream may cut it
                for part in (line[:5], line[5:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                self.server.sent.wait(5)
                self.server.sent.clear()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def docker(tmp_path):
    path = str(tmp_path / "docker.sock")
    srv = Server(path, Handler)
    srv.sent = threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, "http+unix://" + quote(path, safe="")
    srv.shutdown()
    srv.server_close()


def test_json_get_and_http_errors(docker):
    _, base = docker
    resp = UnixSession().get(base + "/containers/json")
    resp.raise_for_status()
    assert resp.json() == [{"Id": "a" * 64}]
    with pytest.raises(DockerApiError, match="HTTP 404"):
        UnixSession().get(base + "/nothing").raise_for_status()


def test_an_event_stream_is_read_line_by_line_as_it_arrives_and_its_end_raises(docker):
    srv, base = docker
    seen = []
    with pytest.raises(DockerApiError, match="ended"):
        with UnixSession().get(base + "/events?since=1&filters=%7B%7D", stream=True, timeout=(5, None)) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                seen.append(json.loads(line)["n"])
                srv.sent.set()  # the server sends the next event only now
    assert seen == [0, 1, 2]


def test_no_socket_is_an_error_naming_the_call(tmp_path):
    with pytest.raises(DockerApiError, match="/containers/json"):
        UnixSession().get("http+unix://" + quote(str(tmp_path / "none.sock"), safe="") + "/containers/json")
    with pytest.raises(DockerApiError):
        UnixSession().get("http://example.invalid/x")
    assert not os.path.exists(tmp_path / "none.sock")
