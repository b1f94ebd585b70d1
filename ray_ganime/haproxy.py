"""Ray's HAProxy under ``ganime serve``, kept to loopback and answering its own errors in JSON.

Ray Serve 2.60 writes HAProxy's config from a fixed template (ray/serve/_private/haproxy_templates.py) with a
stats page (``listen stats``, :8404) and a Prometheus endpoint (``frontend prometheus``, :9101) on every
interface without auth, its admin socket mode 666, and plain-text error pages; no setting changes those.
So ``runtime.use_serve_high_throughput`` points RAY_SERVE_HAPROXY_BINARY_PATH, which Ray supports, at a script
that runs this module with the real binary and Ray's arguments: it edits the config file that ``-f`` names
(Ray writes it afresh before every start and reload), then becomes HAProxy. The edits:

- the stats and Prometheus sections go (nothing in Ray reads them; their fixed ports would also keep a second
  server on the machine from starting);
- the admin socket becomes mode 600;
- HAProxy's own error pages (no replica to answer, a timeout) become the API's JSON ``{"error", "reason"}``:
  what no replica could serve is a 503 with Retry-After, never Ray's text 500. (A malformed request still
  gets HAProxy's HTML 400: see ERRORS.)
- ``option http-buffer-request``: a request's body is read whole (up to tune.bufsize, runtime.py) before it
  goes to a replica, so a replica that dies can be retried on another, and a client still uploading is never
  cut off mid-body by an answer it then cannot read.

If a later Ray renames what this looks for, the edit does nothing and tests/test_faults_server.py, which lists
the server's listening sockets and checks the error pages, fails. This module must not import Ray: it runs
before every HAProxy start, replica restarts included.
"""

from __future__ import annotations

import json
import os
import re
import sys
from http import HTTPStatus
from pathlib import Path

# Sections dropped whole: a section runs from its unindented header to the next unindented line.
DROPPED_SECTIONS = re.compile(r"^(listen stats|frontend prometheus)\b")
SOCKET_MODE = re.compile(r"^(\s*stats socket \S+ mode )666\b", re.MULTILINE)
ERRORFILE = re.compile(r"^\s*errorfile \d+ .*\n", re.MULTILINE)
RETRY_AFTER_S = 1
# HAProxy's own answers -> (status sent, reason). 502 (a replica died mid-request) and 503 (no replica up)
# both mean "try again shortly". Not 400 and 408: HAProxy 2.8 answers a malformed or late request from its HTTP/1
# layer with its built-in HTML page whatever the config says (mux_h1.c, h1_send_error), unless the errorfile is
# empty, and then the client gets no answer at all.
ERRORS = {
    500: (500, "the proxy failed to handle the request"),
    502: (503, "no replica could answer this request; retry shortly"),
    503: (503, "no replica could answer this request; retry shortly"),
    504: (504, "no replica answered in time"),
}


def error_page(status: int, reason: str) -> bytes:
    """A complete HTTP response, as HAProxy's ``errorfile`` wants it."""
    body = json.dumps({"error": HTTPStatus(status).phrase, "reason": reason}).encode()
    headers = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
               f"Content-Length: {len(body)}", "Cache-Control: no-cache", "Connection: close"]
    if status == 503:
        headers.append(f"Retry-After: {RETRY_AFTER_S}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def harden(config: str, error_dir: Path) -> str:
    """Ray's HAProxy config without the stats and Prometheus listeners, with a private admin socket and the
    JSON error pages (written to ``error_dir``)."""
    kept, dropping = [], False
    for line in config.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            dropping = bool(DROPPED_SECTIONS.match(line))
        if not dropping:
            kept.append(line)
    config = SOCKET_MODE.sub(r"\g<1>600", ERRORFILE.sub("", "".join(kept)))
    lines = ["    option http-buffer-request\n"]
    for code, (status, reason) in ERRORS.items():
        page = error_dir / f"ganime-{code}.http"
        page.write_bytes(error_page(status, reason))
        lines.append(f"    errorfile {code} {page}\n")
    return re.sub(r"^defaults\n", lambda m: m.group(0) + "".join(lines), config, count=1, flags=re.MULTILINE)


def main(argv: list[str]) -> None:
    """``python -m ray_ganime.haproxy REAL_HAPROXY ARGS...``: edit the config named by ``-f`` in ARGS in place
    (Ray finds its HAProxy processes by that path on their command line), then exec the real HAProxy."""
    binary, args = argv[0], argv[1:]
    if "-f" in args:
        path = Path(args[args.index("-f") + 1])
        path.write_text(harden(path.read_text(), path.parent))
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
