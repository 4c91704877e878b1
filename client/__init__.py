"""Python client for a Loom server. Needs only grpcio, protobuf and the stubs in `loompb`.

from client import Client
with Client("127.0.0.1:50051") as client:
    print(client.generate("Once upon a time", max_tokens=32, temperature=0).text)
"""

from client.async_client import AsyncClient
from client.request import build_request
from client.sync_client import Client

__all__ = ["AsyncClient", "Client", "build_request"]
