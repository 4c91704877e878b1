"""What a model's files say, without torch: what `--model` names, GGUF headers, tokenizers and
chat templates. The engine and the worker both read models through it.

- model_source.py     what a --model names (Meta, HF, GGUF, smollm2), one-line refusals
- gguf_file.py        a GGUF file's header and tensor index from a memory map (numpy only),
                      one parse shared by the tokenizer and the weights
- tokenizer.py        the tokenizer seam (Tokenizer) and load_tokenizer: which one a model brings
- tokenizer_sp.py     SentencePiece
- tokenizer_hf.py     tokenizer.json with tokenizer_config.json (Hugging Face `tokenizers`)
- tokenizer_gguf.py   a GGUF's own vocabulary, llama (SentencePiece) and gpt2 (BPE) styles
- tokenizer_files.py  which of a model's files make its tokenizer (a remote worker sends them)
- remote_tokenizer.py the remote model's tokenizer, built from the files its worker sends
- chat_template.py    chat templates rendered as transformers renders them (sandboxed Jinja)
- lora_files.py       LoRA adapters (PEFT directories) read and checked against the base model
- lora_gguf.py        LoRA adapters as GGUF files (llama.cpp's converter's layout), the same checks
"""
