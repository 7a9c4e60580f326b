"""`ppgguf chat`: talk to a built character in the terminal (or from a script).

`ChatSession` is the whole conversation logic, usable from Python: it loads the GGUF with
llama-cpp-python, renders conversations with the file's own chat template (the one with the persona
baked in), keeps the history inside the context window by dropping the oldest turns (never the
system prompt), and streams replies. `run_repl` is the line-oriented front end the CLI calls.

The system prompt is the file's ``ppgguf.system_prompt`` unless one is given; the opening line is the
character's greeting (``ppgguf.persona.greeting``) when the file has one, which also opens the
history as the character's first message, as character cards intend.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import gguf

from .bake import DEFAULT_SAMPLING, read_gguf_strings, sampling_from_metadata
from .errors import UserError
from .llama_io import captured_stderr
from .tokenizer import CHATML_TEMPLATE

HELP = """commands:
  /reset         start the conversation again
  /system TEXT   replace the system prompt (and start again)
  /stats         speed of the last reply, context used
  /save FILE     write the conversation as JSON
  /help          this text
  /quit          leave (end of input works too)"""


@dataclass
class Reply:
    role: str
    content: str
    tokens: int
    seconds: float
    tokens_per_second: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ChatSession:
    """One conversation with a character GGUF."""

    def __init__(
        self,
        gguf_path: str | Path,
        system: str | None = None,
        n_ctx: int = 2048,
        max_tokens: int = 256,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int = 0,
        threads: int | None = None,
    ):
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise UserError(f"'{self.path}' does not exist; give the path of a GGUF built by ppgguf build")
        try:
            meta = read_gguf_strings(self.path)
        except (ValueError, OSError) as err:
            raise UserError(f"'{self.path}' is not a readable GGUF file ({err})") from None
        if n_ctx < 64:
            raise UserError("--ctx must be at least 64 tokens")
        if max_tokens < 1:
            raise UserError("--max-tokens must be at least 1")
        self.metadata = meta
        self.name = meta.get("ppgguf.persona.name") or meta.get(gguf.Keys.General.NAME) or self.path.stem
        self.persona_greeting: str | None = meta.get("ppgguf.persona.greeting") or None
        self.file_system_prompt: str | None = meta.get("ppgguf.system_prompt")
        self.system_prompt: str | None = system if system is not None else self.file_system_prompt
        self.template = meta.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) or CHATML_TEMPLATE
        self.sampling = {**DEFAULT_SAMPLING, **sampling_from_metadata(meta)}
        if temperature is not None:
            self.sampling["temperature"] = temperature
        if top_p is not None:
            self.sampling["top_p"] = top_p
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        self.history: list[dict[str, str]] = []
        self.last: Reply | None = None
        self.dropped_messages = 0
        self._llm = self._load(seed, threads)
        self.reset()

    # -- loading and rendering -------------------------------------------------------------

    def _load(self, seed: int, threads: int | None):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        with captured_stderr() as log:
            try:
                llm = llama_cpp.Llama(
                    str(self.path), n_ctx=self.n_ctx, n_batch=min(self.n_ctx, 512), n_gpu_layers=0,
                    n_threads=threads or os.cpu_count(), seed=seed, verbose=False,
                )
            except ValueError as err:
                raise UserError(f"llama.cpp cannot load '{self.path}': {log.last_line() or err}") from None
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        # The file's template, read exactly (GGUFReader), renders both what we count and what we send.
        self._formatter = Jinja2ChatFormatter(self.template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id])
        llm.chat_handler = self._formatter.to_chat_handler()
        return llm

    def messages(self) -> list[dict[str, str]]:
        """The conversation as sent to the model: system prompt (if any) + history."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return system + [dict(m) for m in self.history]

    def render(self, messages: list[dict[str, str]] | None = None) -> str:
        """The prompt text llama.cpp will see for `messages` (default: the current conversation)."""
        return self._formatter(messages=self.messages() if messages is None else messages).prompt

    def count_tokens(self, messages: list[dict[str, str]] | None = None) -> int:
        """Prompt tokens of `messages` with the model's tokenizer, generation prompt included."""
        text = self.render(messages)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    # -- conversation ------------------------------------------------------------------------

    def greeting(self) -> str:
        return self.persona_greeting or f"({self.name} is listening. /help for commands)"

    def reset(self) -> None:
        self.history = [{"role": "assistant", "content": self.persona_greeting}] if self.persona_greeting else []
        self.last = None

    def set_system(self, text: str) -> None:
        self.system_prompt = text
        self.reset()

    def reply_budget(self) -> int:
        """Tokens kept free for the reply: max_tokens, but at most half the window."""
        return min(self.max_tokens, self.n_ctx // 2)

    def trim(self) -> int:
        """Drop the oldest turns until prompt + reply budget fits the window; returns messages dropped."""
        limit = self.n_ctx - self.reply_budget()
        dropped = 0
        while self.count_tokens() > limit:
            # keep at least the newest user message; drop whole leading turns (up to the next user message)
            if len(self.history) <= 1:
                raise UserError(
                    f"the message does not fit the context window ({self.count_tokens()} prompt tokens, "
                    f"{self.n_ctx} in the window, {self.reply_budget()} kept for the reply); "
                    "shorten it or use a larger --ctx"
                )
            self.history.pop(0)
            dropped += 1
            while len(self.history) > 1 and self.history[0]["role"] != "user":
                self.history.pop(0)
                dropped += 1
        self.dropped_messages += dropped
        return dropped

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Add a user message, stream the character's reply (each piece to `on_text`), return it."""
        saved, saved_dropped = list(self.history), self.dropped_messages
        self.history.append({"role": "user", "content": text})
        try:
            self.trim()
        except UserError:
            self.history, self.dropped_messages = saved, saved_dropped
            raise
        budget = self.reply_budget()
        room = self.n_ctx - self.count_tokens()
        start = time.perf_counter()
        pieces: list[str] = []
        try:
            stream = self._llm.create_chat_completion(
                messages=self.messages(),
                stream=True,
                max_tokens=max(1, min(budget, room)),
                temperature=float(self.sampling["temperature"]),
                top_p=float(self.sampling["top_p"]),
                top_k=int(self.sampling["top_k"]),
                min_p=float(self.sampling["min_p"]),
                repeat_penalty=float(self.sampling["repeat_penalty"]),
            )
            for chunk in stream:
                piece = chunk["choices"][0].get("delta", {}).get("content")
                if piece:
                    pieces.append(piece)
                    if on_text is not None:
                        on_text(piece)
        except KeyboardInterrupt:
            pass  # keep what was generated so far
        seconds = time.perf_counter() - start
        content = "".join(pieces)
        tokens = len(self._llm.tokenize(content.encode("utf-8"), add_bos=False, special=True)) if content else 0
        self.history.append({"role": "assistant", "content": content})
        self.last = Reply("assistant", content, tokens, round(seconds, 3), round(tokens / seconds, 2) if seconds > 0 else 0.0)
        return self.last

    def stats(self) -> dict[str, Any]:
        return {
            "last_reply_tokens": self.last.tokens if self.last else None,
            "last_reply_seconds": self.last.seconds if self.last else None,
            "tokens_per_second": self.last.tokens_per_second if self.last else None,
            "context_used": self.count_tokens(),
            "n_ctx": self.n_ctx,
            "messages": len(self.history),
            "dropped_messages": self.dropped_messages,
        }

    def transcript(self) -> dict[str, Any]:
        return {
            "model": str(self.path),
            "character": self.name,
            "system_prompt": self.system_prompt,
            "sampling": self.sampling,
            "n_ctx": self.n_ctx,
            "messages": self.messages(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"cannot save to '{path}': directory '{path.parent}' does not exist")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.transcript(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()


# -- the REPL --------------------------------------------------------------------------------


def _format_stats(s: dict[str, Any]) -> str:
    if s["last_reply_tokens"] is None:
        speed = "no reply yet"
    else:
        speed = f"last reply {s['last_reply_tokens']} tokens in {s['last_reply_seconds']:.2f} s ({s['tokens_per_second']:.1f} tokens/s)"
    return f"{speed}; context {s['context_used']} / {s['n_ctx']} tokens"


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
    err = err or sys.stderr
    if interactive is None:
        interactive = lines is None and sys.stdin.isatty() and out.isatty()

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    def emit(obj: dict) -> None:
        say(json.dumps(obj, ensure_ascii=False))

    def note(text: str) -> None:
        if json_mode:
            emit({"info": text})
        else:
            say(text)

    if not quiet:
        if json_mode:
            if session.persona_greeting:
                emit({"role": "assistant", "content": session.persona_greeting, "greeting": True})
        else:
            say(session.greeting())

    def read_lines() -> Iterable[str]:
        if lines is not None:
            yield from lines
            return
        if interactive:
            while True:
                try:
                    yield input("you> ")
                except EOFError:
                    say()
                    return
        else:
            yield from sys.stdin

    for raw in read_lines():
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, arg = line[1:].partition(" ")
            command, arg = command.lower(), arg.strip()
            if command in ("quit", "exit", "q"):
                return 0
            if command == "help":
                note(HELP)
            elif command == "reset":
                session.reset()
                note("(conversation reset)")
            elif command == "system":
                if not arg:
                    note("usage: /system TEXT")
                else:
                    session.set_system(arg)
                    note("(system prompt replaced; conversation reset)")
            elif command == "stats":
                stats = session.stats()
                emit({"stats": stats}) if json_mode else say(_format_stats(stats))
            elif command == "save":
                if not arg:
                    note("usage: /save FILE")
                else:
                    try:
                        note(f"(saved to {session.save(arg)})")
                    except (UserError, OSError) as e:
                        err.write(f"error: {e}\n")
            else:
                err.write(f"unknown command /{command}; /help lists the commands\n")
            continue
        try:
            if json_mode:
                reply = session.send(line)
                emit(reply.to_json())
            else:
                if interactive:
                    out.write(f"{session.name}: ")
                reply = session.send(line, on_text=lambda piece: (out.write(piece), out.flush()))
                say()
        except UserError as e:
            err.write(f"error: {e}\n")
    return 0
