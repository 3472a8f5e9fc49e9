"""Run one process of the platform: `python -m libs.common.serve services.tickets.app:create_app --port 8101`.

uvicorn with uvloop and httptools, no access log (we log requests ourselves), and a graceful
drain on SIGTERM/SIGINT that ends with exit status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess


def _after_drain(signum: int, frame: object) -> None:
    # uvicorn re-raises the signal once it has drained; by then the work is done, so the
    # process exits normally (status 0) instead of "killed by SIGTERM".
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helpdesk-serve", description=__doc__)
    parser.add_argument("app_factory", help="module:function returning the ASGI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--graceful-timeout", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _after_drain)
    signal.signal(signal.SIGINT, _after_drain)
    config = uvicorn.Config(
        args.app_factory,
        factory=True,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=int(args.graceful_timeout),
        lifespan="on",
        workers=args.workers,
    )
    if args.workers > 1:
        # uvicorn's supervisor: restarts a worker that dies, drains all on SIGTERM.
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
