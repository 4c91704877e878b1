"""Benchmarks against the peers: `python -m bench NAME`, each writing its section of
BENCHMARKS.md (the command, the machine, the peer's figure in the same run); and the device
check, `bench/gpu_check.sh`.

- __main__.py        the entry: every benchmark by name; `make-model`, `export-hf` and
                     `make-7b-gguf` write the models they run
- common.py          the machine and BENCHMARKS.md sections, greedy sampling declared once,
                     random-token workloads, Loom's engine offline, matmul FLOPs
- peers.py           `peers`: Loom against its peers on one workload (`--peer`), with
                     `--startup` times; `accuracy`: packed weights against the oracle
- peer_systems.py    the systems it runs: Loom, transformers, a Meta-style static batch loop,
                     llama.cpp's llama-server; a fresh process's start-up timed
- scheduler_benches.py  `scheduler`, `kv-waste`, `deadline-sim`: the scheduler alone, no
                     model
- kernels.py         `paged-attention`: one step on the paged KV cache vs a contiguous one;
                     `quant-kernels`: one projection on packed GGUF blocks, per kernel
- worker_steps.py    `decode-floor`, `step-profile`, `engine-profile`, `efficiency`: the
                     worker's steps timed
- engine_benches.py  `prefix-cache`, `chunked-prefill`: the engine under prompt load;
                     `lora`: adapters mixed vs the base model; `structured`: constrained
                     requests' throughput, compile times;
                     `speculative`: decode tok/s with and without prompt lookup
- remote_worker.py   `remote-worker`: a step over loopback gRPC; tensor parallel on the CPU
- servers.py         `online`, `fairness overload|flood|quantum`: a served model with loadtest
                     as the client; the server process the router and reliability
                     benchmarks start
- router.py          `router`: the routing policies over two engine replicas
- reliability.py     `reliability overload|drain`: shedding a flood, draining on SIGTERM
- gpu_check.sh, gpu_check.py, gpu_parts.py   the device check: verification (kernel vs
                     reference, greedy text), then decode steps and throughput vs transformers
"""
