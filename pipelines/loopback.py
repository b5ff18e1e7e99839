"""A threaded HTTP server on 127.0.0.1 serving a directory, with optional hostile routes for tests.

Routes under /_hostile/ (when hostile=True):
  /_hostile/status/<code>     responds with that HTTP status
  /_hostile/stall/<file>      sleeps `stall_s` (bounded by the server's lifetime) then serves <file>
                              from hostile/
  /_hostile/flaky/<file>      503 on the first `flaky_failures` requests for that path, then serves it
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, *, hostile: bool, stall_s: float, flaky_failures: int) -> None:
        super().__init__(addr, handler)
        self.hostile = hostile
        self.stall_s = stall_s
        self.flaky_failures = flaky_failures
        self.hits: dict[str, int] = {}
        self.hits_lock = threading.Lock()
        self.closing = threading.Event()

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up early (timeouts in tests) are expected; anything else is reported."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002  (quiet: tests run hundreds of requests)
        return

    def _count(self) -> int:
        with self.server.hits_lock:
            n = self.server.hits.get(self.path, 0) + 1
            self.server.hits[self.path] = n
        return n

    def do_GET(self) -> None:  # noqa: N802
        self._count()
        if self.server.hostile and self.path.startswith("/_hostile/"):
            parts = self.path.split("?", 1)[0].split("/")[2:]
            kind, arg = (parts + ["", ""])[:2]
            if kind == "status" and arg.isdigit():
                self.send_error(int(arg))
                return
            if kind == "stall":
                self.server.closing.wait(self.server.stall_s)
                self.path = f"/hostile/{arg}"
            elif kind == "flaky":
                if self.server.hits[self.path] <= self.server.flaky_failures:
                    self.send_error(503, "flaky route: try again later")
                    return
                self.path = f"/hostile/{arg}"
            else:
                self.send_error(404)
                return
        super().do_GET()


@contextmanager
def serve_directory(directory: str | os.PathLike, *, hostile: bool = True, stall_s: float = 5.0,
                    flaky_failures: int = 1, lifetime_s: float = 900.0) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (ephemeral port) and yield its base URL; stops on exit or after lifetime_s."""
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} does not exist")
    if stall_s < 0 or lifetime_s <= 0:
        raise ValueError(f"stall_s must be >= 0 and lifetime_s > 0, got {stall_s}, {lifetime_s}")
    handler = functools.partial(_Handler, directory=os.fspath(directory))
    server = _Server(("127.0.0.1", 0), handler, hostile=hostile, stall_s=stall_s, flaky_failures=flaky_failures)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                              name="loopback-http")
    thread.start()
    deadline = threading.Timer(lifetime_s, server.shutdown)
    deadline.daemon = True
    deadline.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        deadline.cancel()
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


