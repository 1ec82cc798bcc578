"""A small WSGI application for keel's HTTP workers (run by gunicorn, unmodified).

keel starts `gunicorn app:app` with a listening unix socket as fd 3 (LISTEN_FDS=1,
LISTEN_PID): gunicorn serves on it without a --bind. Routes:

  /            a greeting
  /pid         the id of the process that answered
  /headers     the request headers as JSON (to see X-Forwarded-* and Forwarded)
  /cached      Cache-Control: public, max-age=60, with a per-process counter in the body
  /count       how many requests this process has answered
  /sleep?ms=N  answers after N milliseconds
  /echo        (POST) the request body back
  /crash       the process dies (SIGKILL) mid-request
  /health      200, for `health_path`
"""

import json
import os
import signal
import time
from urllib.parse import parse_qs

counter = {"requests": 0, "cached": 0}


def app(environ, start_response):
    counter["requests"] += 1
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))

    def reply(body, status="200 OK", ctype="text/plain; charset=utf-8", extra=()):
        data = body if isinstance(body, bytes) else body.encode()
        headers = [("Content-Type", ctype), ("Content-Length", str(len(data)))]
        headers.extend(extra)
        start_response(status, headers)
        return [data]

    if path == "/":
        return reply("Hello from WSGI\n")
    if path == "/pid":
        return reply(str(os.getpid()))
    if path == "/headers":
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        return reply(json.dumps(headers, sort_keys=True), ctype="application/json")
    if path == "/cached":
        counter["cached"] += 1
        return reply(
            f"cached {os.getpid()} {counter['cached']}\n",
            extra=[("Cache-Control", "public, max-age=60")],
        )
    if path == "/count":
        return reply(str(counter["requests"]))
    if path == "/sleep":
        ms = int(query.get("ms", ["0"])[0])
        time.sleep(ms / 1000)
        return reply(f"slept {ms} ms")
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        return reply(body, ctype=environ.get("CONTENT_TYPE") or "application/octet-stream")
    if path == "/crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/health":
        return reply("ok\n")
    return reply("not found\n", status="404 Not Found")
