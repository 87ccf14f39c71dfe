"""Terminal chat with the qwen-triton ensemble, streaming each reply as it arrives.

    python -m clients.chat --url localhost:8001 --protocol grpc --system "You are a terse assistant."
    printf 'Hi\\nAnd then?\\n' | python -m clients.chat --protocol http --temperature 0
    python -m clients.chat --api openai --base-url http://127.0.0.1:9000/v1    # the OpenAI-compatible API

Each line read from stdin is one user turn; the conversation so far is sent as chat ``messages`` (the
server renders them with the model's chat template), to Triton's ensemble or, with ``--api openai``, to the
OpenAI-compatible API's /v1/chat/completions.  Commands: ``/reset`` clears the history, ``/exit``
(or end of input) quits, ``/help`` lists them.  Ctrl-C while a reply streams cancels that reply (it is not
kept in the history).

Only replies go to stdout, one per turn, each ending with a newline; prompts are shown only when stdin is
a terminal, and notices and errors go to stderr, so the chat can be driven through a pipe.  The exit
status is 1 if any turn failed.
"""
from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .cli import add_connection_args, add_sampling_args, check_connection_args, connect, describe, sampling_fields
from .triton_client import ClientError, GenerateRequest

HELP = "commands: /reset clears the history, /exit quits (so does end of input), /help shows this"


class Chat:
    """A multi-turn conversation: history as chat messages, one streamed reply per user turn."""

    def __init__(self, client, system: str | None = None, out: TextIO | None = None,
                 err: TextIO | None = None, prefix: str = "", **sampling):
        self.client = client
        self.system = system
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.prefix = prefix
        self.sampling = sampling
        self.history: list[dict[str, str]] = []

    def messages(self, user: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": user}]

    def reset(self) -> None:
        self.history.clear()

    def turn(self, user: str) -> bool:
        """Send one user turn and stream the reply to ``out``; True if the reply joined the history."""
        req = GenerateRequest(messages=self.messages(user), stream=True, **self.sampling)
        printed = False
        try:
            stream = self.client.stream(req)
            try:
                self.out.write(self.prefix)
                for chunk in stream:
                    self.out.write(chunk)
                    self.out.flush()
                    printed = True
            except KeyboardInterrupt:
                stream.cancel()
                self.out.write("\n")
                self.out.flush()
                print("[cancelled; the reply is not kept]", file=self.err)
                return False
            finally:
                stream.close()
        except ClientError as exc:
            if printed or self.prefix:
                self.out.write("\n")
            self.out.flush()
            print(f"error: {exc.message}", file=self.err, flush=True)
            return False
        self.out.write("\n")
        self.out.flush()
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": stream.text}]
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clients.chat", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--system", help="system prompt (default: the server's)")
    add_sampling_args(p)
    p.set_defaults(max_tokens=512)
    args = p.parse_args(argv)
    check_connection_args(p, args)
    return args


def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    args = parse_args(argv)
    stdin = stdin or sys.stdin
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    interactive = stdin.isatty()
    chat = Chat(connect(args), system=args.system, prefix="qwen> " if interactive else "",
                **sampling_fields(args))
    if interactive:
        print(f"chat with {describe(args)}; {HELP}", file=sys.stderr)
    failed = False
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            break
        if not line:  # end of input
            if interactive:
                sys.stdout.write("\n")
            break
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            chat.reset()
            print("[history cleared]", file=sys.stderr, flush=True)
            continue
        if command == "/help":
            print(HELP, file=sys.stderr, flush=True)
            continue
        if not chat.turn(text):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
