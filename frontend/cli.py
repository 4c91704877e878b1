"""`python -m frontend serve`: load a model, start the engine loop and the gRPC server (with
`--http-port`, the OpenAI-compatible HTTP API too, on the same event loop).
`health` asks a server whether it serves; `hash-key` prints a tenants-file key line.

With no flags it serves the bundled models/stories260K on 127.0.0.1:50051, on the GPU when
one is present and on the CPU otherwise. SIGTERM or Ctrl-C drains: health turns NOT_SERVING,
new calls get UNAVAILABLE, requests in flight get --shutdown-timeout seconds to finish and are
aborted after it (a second signal aborts them at once), and the process exits 0. SIGHUP
reloads the --tenants file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from common.flags import add_settings_flags, settings_from_args
from common.threads import available_cpus
from frontend.config import FrontendConfig, ServeConfig
from frontend.ports import PortTaken, reserve_ports
from frontend.server import Frontend
from modelfiles.model_source import UnreadableModelError, resolve_model
from scheduler.config import EngineConfig
from scheduler.gc_tuning import tune_gc_for_serving

log = logging.getLogger("loom.serve")
WAIT_INTERVAL = 0.5  # seconds between the checks of `health --wait`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m frontend")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model over gRPC (and HTTP)", description=__doc__
    )
    add_settings_flags(serve, ServeConfig)

    health = commands.add_parser(
        "health", help="ask a server's grpc.health.v1 service; exit 0 only when SERVING"
    )
    health.add_argument("--target", default="127.0.0.1:50051", help="host:port")
    health.add_argument("--service", default="", help="service name ('' is the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    health.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="ask again until SERVING or SECONDS have passed (a server still loading its model "
        "does not answer yet); default 0: ask once",
    )
    health.add_argument("--tls-ca", metavar="FILE", help="PEM CA bundle: speak TLS, trust it")
    health.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    health.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")

    commands.add_parser(
        "hash-key",
        help="read an API key from stdin, print its tenants-file line",
        description="Reads one API key from stdin (the trailing newline dropped) and prints "
        "the `api_key_sha256 = [...]` line for a [tenants.NAME] table of a --tenants file.",
    )
    return parser


def print_hash_line() -> int:
    key = sys.stdin.readline().rstrip("\r\n")
    if not key.strip():
        print("error: no API key on stdin", file=sys.stderr)
        return 2
    from serving.tenants import hash_line

    print(hash_line(key))
    return 0


def check_health(
    target: str,
    service: str,
    timeout: float,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    wait: float = 0.0,
) -> int:
    """For container health checks and scripts: prints the status, exits 0 only when
    SERVING; with `wait`, asks again (every WAIT_INTERVAL) until then or until `wait` seconds
    have passed, and prints the last answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from client.channel import channel_credentials

    credentials = channel_credentials(tls_ca, tls_cert, tls_key)
    deadline = time.monotonic() + wait
    while True:
        if credentials is None:
            channel = grpc.insecure_channel(target)
        else:
            channel = grpc.secure_channel(target, credentials)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            try:
                reply = stub.Check(request, timeout=timeout)
                answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError as exc:
                answer, serving = f"{exc.code().name}: {exc.details()}", False
        if serving or time.monotonic() + WAIT_INTERVAL > deadline:
            print(f"{target}: {answer}")
            return 0 if serving else 1
        time.sleep(WAIT_INTERVAL)


def load_local_engine(engine_config: EngineConfig):  # -> scheduler.Engine
    """The engine with its worker in this process, built on a thread of its own that then
    ends. OpenMP keeps a pool of threads per thread that starts parallel work; a pool left on
    the main thread beside the engine loop's makes libgomp stop spinning its threads between
    parallel regions (more threads than cores), so every region would wait for a wake-up."""
    from scheduler.engine import Engine

    if engine_config.model.num_threads is None:  # the cores this process may really use
        model = dataclasses.replace(engine_config.model, num_threads=available_cpus())
        engine_config = dataclasses.replace(engine_config, model=model)
    result: dict[str, object] = {}

    def build() -> None:
        try:
            result["engine"] = Engine.from_config(engine_config)
        except BaseException as exc:  # raised again on the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=build, name="engine-load")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["engine"]


def load_engine(config: ServeConfig):  # -> scheduler.Engine
    """The engine with its worker: in this process, or the remote one --worker names."""
    started = time.monotonic()
    remote = config.remote
    if remote.worker is not None:
        from frontend.remote_engine import remote_engine

        engine = remote_engine(
            config.engine, remote.worker, remote.worker_timeout, remote.worker_startup_timeout
        )
        source = f"the worker at {remote.worker}"
    else:
        engine = load_local_engine(config.engine)
        source = config.engine.model.model
    info = engine.info
    log.info(
        "loaded %s from %s in %.1f s: vocab %d, max length %d, %s on %s, tensor parallel %d",
        info.model_name,
        source,
        time.monotonic() - started,
        info.vocab_size,
        engine.max_model_len,
        info.dtype,
        info.device,
        info.tensor_parallel_size,
    )
    log.info(
        "KV cache: %d blocks x %d tokens = %d tokens; prefix caching %s",
        info.num_kv_blocks,
        info.block_size,
        info.num_kv_blocks * info.block_size,
        "on" if config.engine.scheduler.enable_prefix_caching else "off",
    )
    return engine


async def serve(engine, config: FrontendConfig) -> int:
    frontend = Frontend(engine, config)
    await frontend.start()
    if frontend.metrics_port is not None:
        log.info("metrics on %s", config.metrics_url(frontend.metrics_port))
    if frontend.http_port is not None:
        scheme = "https" if config.tls_cert else "http"
        log.info(
            "OpenAI-compatible API on %s://%s:%d/v1 (and /health, /metrics)",
            scheme,
            config.host,
            frontend.http_port,
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, frontend.reload_tenants)
    # Last, once everything is up and the signals are handled: scripts wait for this line.
    log.info(
        "ready: listening on %s:%d (loom.v1.Generation, grpc.health.v1, reflection)",
        config.host,
        frontend.port,
    )
    await stop.wait()
    log.info("signal received: draining (a second signal aborts requests in flight)")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, frontend.cut_drain_short)
    await frontend.drain()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "health":
        return check_health(
            args.target,
            args.service,
            args.timeout,
            args.tls_ca,
            args.tls_cert,
            args.tls_key,
            args.wait,
        )
    if args.command == "hash-key":
        return print_hash_line()
    try:
        config: ServeConfig = settings_from_args(ServeConfig, args)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    if config.remote.worker is None:
        try:
            resolve_model(config.engine.model.model)  # before logging starts: one line, exit 2
        except UnreadableModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=config.frontend.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    api_keys = config.frontend.api_keys
    if api_keys:
        log.info("API keys: %d keys for %d tenants", len(api_keys), len(set(api_keys.values())))
    if config.frontend.tenants:
        log.info("tenants from %s (SIGHUP reloads it)", config.frontend.tenants)
    try:
        ports = reserve_ports(config.frontend)  # before the load: a taken port ends it at once
    except PortTaken as exc:
        log.error("%s", exc)
        return 2
    try:
        engine = load_engine(config)
    except UnreadableModelError as exc:  # a broken checkpoint, tokenizer or GGUF file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a tensor-parallel size the model cannot be split by, ...
        log.error("%s", exc)
        return 2
    except RuntimeError as exc:  # the remote worker never answered, or refused
        if config.remote.worker is None:
            raise
        log.error("%s", exc)
        return 1
    finally:
        ports.release()  # the servers bind them now (or the process exits)
    tune_gc_for_serving()  # everything loaded so far lives as long as the server
    try:
        return asyncio.run(serve(engine, ports.config))
    except (RuntimeError, OSError) as exc:  # a port that is taken: gRPC's, or the metrics one
        if not isinstance(exc, OSError) and "bind" not in str(exc).lower():
            raise
        log.error("cannot listen on %s: %s", config.frontend.host, exc)
        return 2
    finally:
        engine.close()  # a remote worker's session, tensor-parallel ranks
