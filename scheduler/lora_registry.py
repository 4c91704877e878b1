"""The LoRA adapters the engine serves, by name: loaded at start (--lora NAME=PATH) or at run
time (the admin calls), each checked against the model before it is listed (the worker
reads its tensors when a request first needs it).

Every load gets a new lora_id, so an adapter loaded again under the same name is another
adapter: requests already running keep the one they started with, and no prefix-cache
block of the old one serves the new one. No torch.
"""

from __future__ import annotations

import threading
from pathlib import Path

from contract.step import LoraRef, WorkerInfo
from modelfiles.lora_files import BaseShapes, LoraError, check_lora_name, read_lora
from scheduler.errors import LoraNotFoundError


class LoraExistsError(LoraError):
    """A load under a name already served (gRPC ALREADY_EXISTS)."""


class LoraRegistry:
    """Thread-safe: the admin calls and admission run on the event loop, stats elsewhere."""

    def __init__(self, info: WorkerInfo) -> None:
        self.info = info
        self.max_rank = info.max_lora_rank
        self._base = BaseShapes.of(info)
        self._lock = threading.Lock()
        self._by_name: dict[str, LoraRef] = {}
        self._next_id = 1

    def load(self, name: str, path: str) -> LoraRef:
        """Check and list an adapter; LoraError for a bad name, a name in use or bad files."""
        check_lora_name(name)
        if self.info.max_loras < 1:
            raise LoraError("this worker serves no LoRA adapters")
        read_lora(path, self._base, self.max_rank)
        with self._lock:
            if name in self._by_name:
                raise LoraExistsError(f"adapter {name!r} is already loaded; unload it first")
            ref = LoraRef(self._next_id, name, str(Path(path).resolve()))
            self._next_id += 1
            self._by_name[name] = ref
        return ref

    def unload(self, name: str) -> LoraRef:
        """Stop serving an adapter; requests already running on it finish with it."""
        with self._lock:
            ref = self._by_name.pop(name, None)
        if ref is None:
            raise LoraNotFoundError(f"no LoRA adapter named {name!r}")
        return ref

    def get(self, name: str) -> LoraRef:
        ref = self._by_name.get(name)
        if ref is None:
            raise LoraNotFoundError(f"no LoRA adapter named {name!r}")
        return ref

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)
