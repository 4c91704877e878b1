"""vLLM's admin routes for LoRA adapters: POST /v1/load_lora_adapter {lora_name, lora_path}
and POST /v1/unload_lora_adapter {lora_name}, authenticated as every route is and allowed to
admin tenants only (frontend/lora_admin.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from frontend.http.routes import OpenAIRoutes
from frontend.http.schemas import _Body, parse_body


class LoadLoraAdapterRequest(_Body):
    lora_name: str
    lora_path: str

    def unsupported(self) -> str | None:
        return None


class UnloadLoraAdapterRequest(_Body):
    lora_name: str

    def unsupported(self) -> str | None:
        return None


class LoraRoutes:
    def __init__(self, routes: OpenAIRoutes) -> None:
        self.routes = routes

    async def load(self, request: Request) -> Response:
        tenant = self.routes._tenant(request)
        body = parse_body(LoadLoraAdapterRequest, await self.routes._body(request))
        self.routes.lora_admin.load(tenant, body.lora_name, body.lora_path)
        return JSONResponse({"lora_name": body.lora_name, "status": "loaded"})

    async def unload(self, request: Request) -> Response:
        tenant = self.routes._tenant(request)
        body = parse_body(UnloadLoraAdapterRequest, await self.routes._body(request))
        self.routes.lora_admin.unload(tenant, body.lora_name)
        return JSONResponse({"lora_name": body.lora_name, "status": "unloaded"})
