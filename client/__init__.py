"""Python client for a Loom server (sync and asyncio) and `python -m client`. Needs only
grpcio, protobuf and the stubs in `loompb`.

from client import Client
with Client("127.0.0.1:50051") as client:
    print(client.generate("Once upon a time", max_tokens=32, temperature=0).text)

- sync_client.py, async_client.py  Client and AsyncClient
- request.py         a GenerateRequest and call metadata from plain Python arguments
- channel.py         plaintext, TLS, mutual TLS
- cli.py, __main__.py  `python -m client generate | chat | info | load | abort | tokenize`
- chat.py            the terminal chat
- sampling_flags.py  the sampling flags generate and chat share
"""

from client.async_client import AsyncClient
from client.request import build_request
from client.sync_client import Client

__all__ = ["AsyncClient", "Client", "build_request"]
