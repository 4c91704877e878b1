"""The step contract between the engine and a worker, and everything that carries it: the
messages, their worker.proto form, and the client of a remote worker. No torch."""
