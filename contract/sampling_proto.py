"""SamplingParams to and from `loom.v1.SamplingParams` (proto/serving.proto), by looping over the
dataclass's fields: the public API and worker.proto carry the same message, so a field added
to both declarations crosses both wires with no code here.

A field unset on the wire (an `optional` one) takes the dataclass's default. Floats travel as
float32: for the public API they are rounded back to the decimal the caller most likely typed
(0.7 arrives as 0.699999988), for a worker they stay exact (the engine sends float32 values
already, SamplingParams.as_sampled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from contract.sampling import SamplingParams
from loompb import serving_pb2

_FLOAT = FieldDescriptor.CPPTYPE_FLOAT
_NONE: Mapping[str, Any] = MappingProxyType({})
_DESCRIPTORS = serving_pb2.SamplingParams.DESCRIPTOR.fields_by_name
_MISSING = sorted({f.name for f in fields(SamplingParams)} - set(_DESCRIPTORS))
if _MISSING:  # a field declared in one place only: fail at import, not on a request
    raise ImportError(f"serving.proto's SamplingParams lacks {', '.join(_MISSING)}")


def sampling_to_proto(params: SamplingParams, msg: serving_pb2.SamplingParams) -> None:
    """Write every field of `params` into `msg` (a None leaves an optional field unset)."""
    for f in fields(params):
        value = getattr(params, f.name)
        descriptor = _DESCRIPTORS[f.name]
        if _is_map(descriptor):
            getattr(msg, f.name).update(value)
        elif descriptor.is_repeated:
            getattr(msg, f.name).extend(value)
        elif value is not None:
            setattr(msg, f.name, value)


def sampling_from_proto(
    msg: serving_pb2.SamplingParams, *, exact: bool, defaults: Mapping[str, Any] = _NONE
) -> SamplingParams:
    """The SamplingParams `msg` holds; InvalidFieldError naming a field out of its limits.
    `exact`: keep float32 values as they are (a worker); else round them to 7 significant
    digits (a caller). An optional field left unset takes its value in `defaults` (the
    model's recommended sampling), else the dataclass's default."""
    kwargs: dict[str, Any] = {}
    for f in fields(SamplingParams):
        descriptor = _DESCRIPTORS[f.name]
        if descriptor.has_presence and not msg.HasField(f.name):
            if f.name in defaults:
                kwargs[f.name] = defaults[f.name]
            continue
        value = getattr(msg, f.name)
        if _is_map(descriptor):
            value = {key: _from_wire(descriptor, v, exact) for key, v in value.items()}
        elif descriptor.is_repeated:
            value = list(value)
        else:
            value = _from_wire(descriptor, value, exact)
        kwargs[f.name] = value
    return SamplingParams(**kwargs)


def _is_map(descriptor: FieldDescriptor) -> bool:
    message = descriptor.message_type
    return message is not None and message.GetOptions().map_entry


def _from_wire(descriptor: FieldDescriptor, value: Any, exact: bool) -> Any:
    if _is_map(descriptor):
        descriptor = descriptor.message_type.fields_by_name["value"]
    if descriptor.cpp_type == _FLOAT and not exact:
        return float(f"{value:.7g}")
    return value
