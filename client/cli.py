"""`python -m client ...`: talk to a Loom server from the shell.

python -m client generate "Once upon a time" --max-tokens 64 --temperature 0 --logprobs
python -m client chat --target 127.0.0.1:50051     (a model with a chat template)
python -m client info
python -m client load
python -m client tokenize "Once upon a time" --add-bos
python -m client abort REQUEST_ID --tls-ca ca.pem --tls-cert me.pem --tls-key me.key
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.message import Message

from client.chat import NoChatTemplate, add_chat_arguments, run_chat
from client.sampling_flags import add_sampling_flags, sampling_from_flags
from client.sync_client import Client
from loompb import serving_pb2


def build_parser() -> argparse.ArgumentParser:
    # Connection options go after the command, like its own: `generate "hi" --target host:port`.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--target",
        default=os.environ.get("LOOM_TARGET", "127.0.0.1:50051"),
        help="server address host:port (default: $LOOM_TARGET or 127.0.0.1:50051)",
    )
    connection.add_argument(
        "--api-key",
        default=os.environ.get("LOOM_API_KEY"),
        help="sent as `authorization: Bearer KEY` (default: $LOOM_API_KEY)",
    )
    connection.add_argument("--tenant", help="sent as x-loom-tenant when the server has no keys")
    connection.add_argument("--timeout", type=float, help="deadline per call, seconds")
    connection.add_argument("--tls", action="store_true", help="speak TLS (the system's CAs)")
    connection.add_argument("--tls-ca", metavar="FILE", help="PEM CA bundle to trust (TLS)")
    connection.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mTLS)")
    connection.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")

    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", parents=[connection], help="generate from a prompt")
    gen.add_argument("prompt", help="text prompt; the server adds BOS where the model wants it")
    gen.add_argument("--max-tokens", type=int, help="default 16")
    add_sampling_flags(gen)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--min-tokens", type=int, default=0)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--logprobs", action="store_true", help="print a token/logprob table")
    gen.add_argument("--top-logprobs", type=int, default=0, help="alternatives per token")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")

    gen.add_argument("--request-id", default="", help="default: the server picks one")
    gen.add_argument("--priority", type=int, help="default: the tenant's")
    gen.add_argument("--lora", default="", help="LoRA adapter (default: the tenant's, or none)")
    chat = commands.add_parser(
        "chat", parents=[connection], help="chat in the terminal with the model's chat template"
    )
    add_chat_arguments(chat)

    commands.add_parser("info", parents=[connection], help="describe the model and limits")
    commands.add_parser("load", parents=[connection], help="requests, KV blocks, cache hits")

    abort = commands.add_parser("abort", parents=[connection], help="abort requests by id")
    abort.add_argument("request_ids", nargs="+", metavar="REQUEST_ID")

    tok = commands.add_parser("tokenize", parents=[connection], help="token ids of a text")
    tok.add_argument("text")
    tok.add_argument(
        "--add-bos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="BOS first where the model adds one, as generate counts it (default)",
    )
    return parser


def run_generate(client: Client, args: argparse.Namespace) -> None:
    sampling = dict(
        **sampling_from_flags(args),
        max_tokens=args.max_tokens,
        stop=args.stop,
        min_tokens=args.min_tokens,
        ignore_eos=args.ignore_eos,
        logprobs=args.logprobs or args.top_logprobs > 0,
        top_logprobs=args.top_logprobs,
        request_id=args.request_id,
        priority=args.priority,
        lora=args.lora,
    )
    if args.stream:
        # Merge the deltas into one response so the table below is the same either way.
        reply = serving_pb2.GenerateResponse()
        for delta in client.generate_stream(args.prompt, **sampling):
            print(delta.text, end="", flush=True)
            reply.MergeFrom(delta)  # repeated fields append; the last delta sets finish/usage
        print()
    else:
        reply = client.generate(args.prompt, **sampling)
        print(reply.text)
    if args.logprobs or args.top_logprobs > 0:
        print_logprob_table(client, reply)
    finish = serving_pb2.FinishReason.Name(reply.finish_reason).removeprefix("FINISH_REASON_")
    usage = reply.usage
    print(
        f"[{reply.request_id}] finish_reason={finish.lower()} prompt_tokens={usage.prompt_tokens}"
        f" completion_tokens={usage.completion_tokens}"
        f" cached_prompt_tokens={usage.cached_prompt_tokens}",
        file=sys.stderr,
    )


def print_logprob_table(client: Client, reply: serving_pb2.GenerateResponse) -> None:
    ids = list(reply.token_ids)
    alt_ids = sorted({i for top in reply.top_logprobs for i in top.token_ids})
    pieces = client.detokenize(ids + alt_ids).pieces if ids else []
    piece_of = dict(zip(ids + alt_ids, pieces, strict=True))
    print(f"{'pos':>4}  {'token_id':>8}  {'piece':<16}  {'logprob':>9}")
    for pos, token_id in enumerate(ids):
        logprob = reply.logprobs[pos] if pos < len(reply.logprobs) else float("nan")
        line = f"{pos:>4}  {token_id:>8}  {piece_of[token_id]!r:<16}  {logprob:>9.4f}"
        if pos < len(reply.top_logprobs):
            top = reply.top_logprobs[pos]
            pairs = zip(top.token_ids, top.logprobs, strict=True)
            line += "  " + " ".join(f"{piece_of[i]!r}:{lp:.3f}" for i, lp in pairs)
        print(line)


def format_message(message: Message) -> str:
    """Every field, zeros and empty strings too (protobuf's text form leaves them out), one
    per line as `name: value`; a repeated field once per value."""
    lines = []
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        for item in value if field.is_repeated else [value]:
            lines.append(f"{field.name}: {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


def connect(args: argparse.Namespace) -> Client:
    return Client(
        args.target,
        api_key=args.api_key,
        tenant=args.tenant,
        timeout=args.timeout,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        client = connect(args)
    except (OSError, ValueError) as exc:  # a TLS file missing, or a certificate without key
        parser.error(str(exc))
    with client as c:
        try:
            if args.command == "generate":
                run_generate(c, args)
            elif args.command == "chat":
                run_chat(c, args)
            elif args.command == "info":
                print(format_message(c.model_info()))
            elif args.command == "load":
                print(format_message(c.load()))
            elif args.command == "abort":
                aborted = set(c.abort(args.request_ids))
                for request_id in args.request_ids:
                    print(f"{request_id}: {'aborted' if request_id in aborted else 'not found'}")
                if aborted != set(args.request_ids):
                    return 1
            else:
                reply = c.tokenize(args.text, add_bos=args.add_bos)
                for token_id, piece in zip(reply.token_ids, reply.pieces, strict=True):
                    print(f"{token_id:>8}  {piece!r}")
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        except NoChatTemplate as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0
