"""A minimal model hub on loopback for download tests: the few endpoints the hub library calls.

Serves the model folders under ``root`` (``root/<org>/<name>/...``) at one
fixed commit: ``GET /api/models/<repo>[/revision/<rev>]`` (the file list with
sizes), and ``HEAD`` / ``GET /<repo>/resolve/<rev>/<file>`` with the commit,
ETag and size headers and byte ranges (resume). ``delay_s`` per 64 KiB makes a
download slow enough to watch. Every request is logged in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 << 10


class FakeHub:
    def __init__(self, root: Path, delay_s: float = 0.0) -> None:
        self.root = Path(root)
        self.delay_s = delay_s
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub.serve(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub.serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _repo_and_rest(self, parts: list[str]) -> tuple[str, list[str]]:
        return "/".join(parts[:2]), parts[2:]

    def serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append((h.command, path))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            repo, _ = self._repo_and_rest(parts[2:])
            folder = self.root / repo
            if not folder.is_dir():
                return self._send(h, 404, b'{"error": "Repository not found"}', head, {"X-Error-Code": "RepoNotFound"})
            siblings = [{"rfilename": p.relative_to(folder).as_posix(), "size": p.stat().st_size}
                        for p in sorted(folder.rglob("*")) if p.is_file()]
            body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings})
            return self._send(h, 200, body.encode(), head, {"Content-Type": "application/json"})
        repo, rest = self._repo_and_rest(parts)
        if len(rest) < 3 or rest[0] != "resolve":
            return self._send(h, 404, b"not found", head)
        file = self.root / repo / "/".join(rest[2:])
        if not file.is_file():
            return self._send(h, 404, b"Entry not found", head, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = file.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        start = 0
        status = 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
            status = 206
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return self._send(h, status, data[start:], head, headers, slow=True)

    def _send(self, h, status: int, body: bytes, head: bool, headers: dict | None = None, slow: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head:
            return
        try:
            for i in range(0, len(body), CHUNK):
                h.wfile.write(body[i:i + CHUNK])
                if slow and self.delay_s:
                    time.sleep(self.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
