"""`python -m router serve --backend HOST:PORT [--backend HOST:PORT ...]`: one endpoint in front
of several engine replicas (`python -m frontend serve`), speaking the same API.

SIGTERM or Ctrl-C drains: health turns NOT_SERVING, new calls get UNAVAILABLE, calls in flight
get --shutdown-timeout seconds to finish and then end UNAVAILABLE (a second signal ends them
at once); the process exits 0. SIGHUP reloads the --tenants file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from common.flags import add_settings_flags, settings_from_args
from router.config import RouterConfig
from router.server import Router

log = logging.getLogger("loom.router")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="route requests over engine replicas", description=__doc__
    )
    add_settings_flags(serve, RouterConfig)
    return parser


async def serve(config: RouterConfig) -> int:
    router = Router(config)
    await router.start()
    if router.metrics_port is not None:
        log.info("metrics on %s", config.metrics_url(router.metrics_port))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, router.reload_tenants)
    log.info(
        "listening on %s:%d (loom.v1.Generation, grpc.health.v1, reflection); policy %s over %s",
        config.host,
        router.port,
        config.policy,
        ", ".join(config.backends),
    )
    await stop.wait()
    log.info("signal received: draining (a second signal ends calls in flight)")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.cut_drain_short)
    await router.drain()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config: RouterConfig = settings_from_args(RouterConfig, args)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(serve(config))
    except (RuntimeError, OSError) as exc:  # a port that is taken: gRPC's, or the metrics one
        if not isinstance(exc, OSError) and "bind" not in str(exc).lower():
            raise
        log.error("cannot listen on %s: %s", config.host, exc)
        return 2
