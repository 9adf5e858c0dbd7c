"""Command line: ``radixserve generate "prompt"`` and ``radixserve serve``. Flags come from ``ServerArgs``."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import signal
import sys
import types
import typing

from radixserve.config import ServerArgs


def add_server_args(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(ServerArgs)
    for f in dataclasses.fields(ServerArgs):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kwargs = {"type": _scalar_type(hints[f.name]), "default": f.default, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def _scalar_type(hint) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def args_from_namespace(namespace: argparse.Namespace) -> ServerArgs:
    names = {f.name for f in dataclasses.fields(ServerArgs)}
    return ServerArgs(**{k: v for k, v in vars(namespace).items() if k in names})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="print a completion for a prompt")
    generate.add_argument("prompt", help="the prompt text")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)
    add_server_args(generate)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    add_server_args(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    args = args_from_namespace(namespace)
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s %(name)s] %(message)s")
    if namespace.command == "generate":
        return _generate(namespace, args)
    from radixserve.server.app import run_server

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: every thread's stack to stderr
    run_server(args)
    return 0


def _generate(namespace: argparse.Namespace, args: ServerArgs) -> int:
    from radixserve.engine.offline import Engine

    engine = Engine(**dataclasses.asdict(args))
    prompt = namespace.prompt
    if namespace.chat:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    params = {"max_new_tokens": namespace.max_new_tokens, "temperature": namespace.temperature}
    out = engine.generate(prompt, params)
    sys.stdout.write(out["text"] + "\n")
    engine.shutdown()
    return 0
