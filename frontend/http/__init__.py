"""The OpenAI-compatible HTTP API (Starlette, served by uvicorn on the gRPC server's loop).

- app.py         the app, its routes and error handlers; the server bound to --http-port
- connection.py  uvicorn's h11 connection with a deadline for each request's head; its
                 per-request warnings throttled
- routes.py      /v1/completions, /v1/chat/completions, /v1/models, /tokenize, /health, /metrics
- lora_routes.py /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM's admin routes)
- schemas.py     the request bodies (pydantic), strict types, unsupported fields refused; the
                 sampling fields derived from contract/sampling.py
- convert.py     a body -> prompts and SamplingParams, refusals named as the caller did
- choices.py     one choice as deltas arrive: text, echo, finish reason, logprobs
- logprobs.py    logprobs in the completions (legacy) and chat shapes, token texts, offsets
- responses.py   the response and chunk objects, usage, the model list
- streaming.py   server-sent events, several requests' deltas merged, hang-ups aborted
- errors.py      OpenAI's error shape, the HTTP status of each gRPC status
- body_errors.py what a refused body gets wrong: the field's path, a lone surrogate escape
"""
