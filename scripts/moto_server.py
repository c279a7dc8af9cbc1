#!/usr/bin/env python3
"""Serve moto (DynamoDB, Secrets Manager, ...) for the test harness.

This is moto's own server (``moto.server``) with two changes the tests need:

* Every request is handled under ONE global lock. Stock moto_server handles
  requests on concurrent threads without serialising backend mutations, so a
  conditional ``ADD`` counter (``#c < :limit``) occasionally over-admits or
  loses updates under concurrency. Real DynamoDB applies each item write
  atomically; the lock restores that guarantee, at the cost of throughput the
  tests don't need.
* With ``--parent-pid`` the server exits as soon as that process is gone, so a
  test binary that crashes or is killed never leaks a server.

It prints ``moto_server ready on http://HOST:PORT`` (the real port, useful with
``--port 0``) once the socket is listening, and exits cleanly on SIGTERM/SIGINT.
"""

import argparse
import os
import signal
import sys
import threading
import time

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


class SerializedApp:
    """WSGI middleware that runs the wrapped app one request at a time."""

    def __init__(self, app):
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            result = self._app(environ, start_response)
            # A WSGI app may do work lazily while its body is iterated, so the
            # body is drained inside the lock too.
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


class QuietRequestHandler(MotoRequestHandler):
    """Drops werkzeug's per-request access log; errors are still logged."""

    def log_request(self, code="-", size="-"):
        pass


def watch_parent(parent_pid, stop):
    # Once the parent dies we are re-parented (to init or a subreaper), so
    # getppid() changes. Polling is portable and needs no prctl(PDEATHSIG),
    # which would also fire when the *thread* that spawned us exits.
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=5000, help="port to bind; 0 picks a free one")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer our parent")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        print(f"moto_server: parent {args.parent_pid} is already gone", file=sys.stderr)
        return 1

    app = SerializedApp(DomainDispatcherApplication(create_backend_app))
    handler = MotoRequestHandler if args.access_log else QuietRequestHandler
    server = make_server(args.host, args.port, app, threaded=True, request_handler=handler)

    stopping = threading.Event()

    def stop():
        # shutdown() blocks until serve_forever() returns, so it must never run
        # on the thread that is serving (signal handlers run there).
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())
    if args.parent_pid is not None:
        threading.Thread(target=watch_parent, args=(args.parent_pid, stop), daemon=True).start()

    host, port = server.server_address[:2]
    print(f"moto_server ready on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
