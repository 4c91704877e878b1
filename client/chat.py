"""`python -m client chat`: a terminal chat over gRPC.

Each turn sends the whole conversation to ApplyChatTemplate (the server renders the model's
own chat template and tokenizes it) and streams the reply from GenerateStream on those ids.
One line of input is one user message; an empty line or end of input ends the chat, and
`/reset` starts a new conversation. Sampling flags left out take the model's recommended
sampling (GetModelInfo.default_sampling); a model that recommends no temperature is answered
greedily.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from client.sampling_flags import add_sampling_flags, sampling_from_flags
from client.sync_client import Client


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", help="a system message to open the conversation with")
    parser.add_argument("--max-tokens", type=int, default=512, help="per reply; default 512")
    add_sampling_flags(parser)


class NoChatTemplate(Exception):
    """The model cannot chat: it brings no chat template."""


def run_chat(
    client: Client, args: argparse.Namespace, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout
) -> None:
    try:
        _converse(client, args, stdin, out)
    except KeyboardInterrupt:  # Ctrl-C ends the chat (and cancels a reply in flight)
        out.write("\n")


def _converse(client: Client, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> None:
    info = client.model_info()
    if not info.chat_template:
        # Said before any input is read, as the server would say it to ApplyChatTemplate.
        raise NoChatTemplate(
            f"FAILED_PRECONDITION: {info.model_name} has no chat template: send it a prompt "
            "with `python -m client generate` instead"
        )
    interactive = stdin.isatty()
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    sampling = {"max_tokens": args.max_tokens, **sampling_from_flags(args)}
    if sampling["temperature"] is None and not info.default_sampling.HasField("temperature"):
        # The server would draw at temperature 1, which small chat models answer badly; a
        # model that recommends sampling (generation_config.json) gets what it recommends.
        sampling["temperature"] = 0.0
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = stdin.readline()
        if not line.strip():
            return
        if line.strip() == "/reset":
            messages = list(opening)
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        if interactive:
            out.write("assistant> ")
        reply = []
        for delta in client.chat_stream(messages, **sampling):
            out.write(delta.text)
            out.flush()
            reply.append(delta.text)
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
