"""The benchmark's WSGI application: every request gets 200 text/plain "Hello, world!\n".

Served by gunicorn (bench/workers (a)) and by NGINX Unit (bench/workers (b)); the keel
protocol worker in hello_keel.py answers the same bytes.
"""

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]


application = app
