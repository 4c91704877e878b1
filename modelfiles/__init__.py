"""What a model's files say, without torch: what `--model` names, GGUF headers, tokenizers
and chat templates. The engine and the worker both read models through it."""
