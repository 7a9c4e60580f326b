"""The line-oriented front end of `ppgguf chat`: messages and /commands in, the character's replies out."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, TextIO

from ..errors import UserError
from .chat import ChatSession

HELP = """commands:
  /reset         start the conversation again
  /system TEXT   replace the system prompt (and start again)
  /stats         speed of the last reply, context used
  /save FILE     write the conversation as JSON
  /help          this text
  /quit          leave (end of input works too)"""


def _format_stats(s: dict[str, Any]) -> str:
    if s["last_reply_tokens"] is None:
        speed = "no reply yet"
    else:
        speed = f"last reply {s['last_reply_tokens']} tokens in {s['last_reply_seconds']:.2f} s ({s['tokens_per_second']:.1f} tokens/s)"
    return f"{speed}; context {s['context_used']} / {s['n_ctx']} tokens"


class _Output:
    """Where the REPL writes: replies and notes to `out` (as JSON objects in json mode), errors to `err`."""

    def __init__(self, out: TextIO, err: TextIO, json_mode: bool):
        self.out, self.err, self.json_mode = out, err, json_mode

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def emit(self, obj: dict) -> None:
        self.say(json.dumps(obj, ensure_ascii=False))

    def note(self, text: str) -> None:
        self.emit({"info": text}) if self.json_mode else self.say(text)

    def error(self, text: str) -> None:
        self.err.write(f"error: {text}\n")


def _command(session: ChatSession, line: str, output: _Output) -> bool:
    """Run one /command; True when it ends the conversation."""
    command, _, arg = line[1:].partition(" ")
    command, arg = command.lower(), arg.strip()
    if command in ("quit", "exit", "q"):
        return True
    if command == "help":
        output.note(HELP)
    elif command == "reset":
        session.reset()
        output.note("(conversation reset)")
    elif command == "system":
        if not arg:
            output.note("usage: /system TEXT")
        else:
            session.set_system(arg)
            output.note("(system prompt replaced; conversation reset)")
    elif command == "stats":
        stats = session.stats()
        output.emit({"stats": stats}) if output.json_mode else output.say(_format_stats(stats))
    elif command == "save":
        if not arg:
            output.note("usage: /save FILE")
        else:
            try:
                output.note(f"(saved to {session.save(arg)})")
            except (UserError, OSError) as e:
                output.error(str(e))
    else:
        output.err.write(f"unknown command /{command}; /help lists the commands\n")
    return False


def _read_lines(lines: Iterable[str] | None, interactive: bool, output: _Output) -> Iterable[str]:
    if lines is not None:
        yield from lines
    elif interactive:
        while True:
            try:
                yield input("you> ")
            except EOFError:
                output.say()
                return
    else:
        yield from sys.stdin


def run_repl(
    session: ChatSession,
    lines: Iterable[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    interactive: bool | None = None,
    json_mode: bool = False,
    quiet: bool = False,
) -> int:
    """Read messages and /commands line by line until /quit or end of input; returns the exit code.

    Interactive (a terminal): a prompt before each line, the character's name before each reply.
    Piped: no prompt characters, replies only (plus /command output). `json_mode`: one JSON object
    per reply (``role, content, tokens, tokens_per_second``) and per /stats; `quiet`: no greeting.
    """
    out = out or sys.stdout
    output = _Output(out, err or sys.stderr, json_mode)
    if interactive is None:
        interactive = lines is None and sys.stdin.isatty() and out.isatty()
    if not quiet:
        if session.persona_note():
            output.note(session.persona_note())
        if json_mode:
            if session.persona_greeting:
                output.emit({"role": "assistant", "content": session.persona_greeting, "greeting": True})
        else:
            output.say(session.greeting())

    for raw in _read_lines(lines, interactive, output):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if _command(session, line, output):
                return 0
            continue
        try:
            if json_mode:
                output.emit(session.send(line).to_json())
            else:
                if interactive:
                    out.write(f"{session.name}: ")
                session.send(line, on_text=lambda piece: (out.write(piece), out.flush()))
                output.say()
        except UserError as e:
            output.error(str(e))
    return 0
