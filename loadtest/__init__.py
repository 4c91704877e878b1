"""Loom's load-testing harness: `python -m loadtest --target HOST:PORT ...`. It drives a
running server over gRPC (only the stubs in `loompb`) or any OpenAI-compatible HTTP API, and
reports throughput and latency in the conventions of `vllm bench serve`.

- cli.py, __main__.py  the options and the run; `python -m loadtest soak` (soak_cli.py)
- preflight.py       every option checked before anything is sent
- datasets.py, dataset_files.py  random and shared-prefix prompts; ShareGPT and JSONL files
- arrivals.py        when each request is sent: all at once, Poisson, or gamma gaps
- tenants.py         the `--tenant NAME:KEY:RATE` arrivals of several tenants at once
- driver.py          the calls over gRPC, streamed, cancelled on schedule
- openai_backend.py, http_client.py  `--backend openai`: HTTP/1.1 and server-sent events on h11
- metrics.py, report.py, progress.py, plot.py  latency metrics, the report, progress, plots
- server_metrics.py  the server's /metrics scraped around a run
- soak_plan.py, soak.py, soak_cli.py  the soak: rounds of mixed calls, leaks checked after each
- batch_cost.py      `python -m loadtest.batch_cost`: what one call of many prompts costs the
                     server and another tenant (how --max-prompts-per-request was chosen)
- http_timeouts.py   `python -m loadtest.http_timeouts`: slow-header and idle connections against
                     the HTTP API (how its header and keep-alive timeouts were chosen)
"""
