"""The step contract between the engine and a worker, and everything that carries it: the
messages, their worker.proto form, and the client of a remote worker. No torch.

- step.py            StepInput, StepOutput, NewRequest, WorkerInfo and the Worker protocol
- sampling.py        SamplingParams: every per-request sampling field, declared once with its check
- structured.py      StructuredOutput: what an output must match (schema, regex, choice, grammar)
- sampling_proto.py  SamplingParams to and from serving.proto's message, by looping over the fields
- step_proto.py      the step contract to and from worker.proto's messages
- remote_worker.py   the Worker over worker.proto: sessions, deadlines, reconnect with backoff
"""
