"""What every server of the public API (an engine's, the router's) is: a grpc.aio server that
refuses undecodable requests and unimplemented methods without a traceback
(serving/rpc_guard.py) and takes messages up to its max_request_bytes, with loom.v1.Generation,
grpc.health.v1 and reflection, on the port its settings name, plaintext or TLS."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loompb import serving_pb2, serving_pb2_grpc
from serving.rpc_guard import AsyncRpcGuard
from serving.server_config import ServerConfig
from serving.tls import server_credentials

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["Generation"].full_name


def public_server(config: ServerConfig) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[AsyncRpcGuard()],
        options=[
            ("grpc.max_receive_message_length", config.max_request_bytes),
            # Without this, a second server could bind an explicit port already in use.
            ("grpc.so_reuseport", 0),
        ],
    )


def add_public_services(
    server: grpc.aio.Server,
    servicer: serving_pb2_grpc.GenerationServicer,
    health_servicer: health.aio.HealthServicer,
) -> None:
    serving_pb2_grpc.add_GenerationServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )


def add_public_port(server: grpc.aio.Server, config: ServerConfig) -> int:
    """The bound port; RuntimeError when it is taken, OSError when a TLS file is unreadable."""
    host, port = config.host, config.port
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    credentials = server_credentials(config)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
