"""`ppgguf chat`: talk to a built character in the terminal (or from a script).

`ChatSession` is the whole conversation logic, usable from Python: it loads the GGUF with
llama-cpp-python, renders conversations with the file's own chat template (the one with the persona
baked in), keeps the history inside the context window by dropping the oldest turns (never the
system prompt), and streams replies. `ppgguf.use.repl` is the line-oriented front end the CLI calls.

The system prompt is the file's ``ppgguf.system_prompt`` unless one is given, or none for a file with
the persona baked into its weights (``ppgguf.bake``; its template then inserts its short prompt);
the opening line is the character's greeting (``ppgguf.persona.greeting``) when the file has one,
which also opens the history as the character's first message, as character cards intend.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import gguf

from ..errors import UserError
from ..inputs.tokenizer import CHATML_TEMPLATE
from ..llama.keys import PPGGUF
from ..llama.reader import read_header
from ..llama.runtime import open_gguf
from ..llama.sampling import DEFAULT_SAMPLING, sampling_from_metadata


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
        header = read_header(self.path)
        if n_ctx < 64:
            raise UserError("--ctx must be at least 64 tokens")
        if max_tokens < 1:
            raise UserError("--max-tokens must be at least 1")
        self.name = header.get(PPGGUF.PERSONA_NAME) or header.get(gguf.Keys.General.NAME) or self.path.stem
        self.persona_greeting: str | None = header.get(PPGGUF.PERSONA_GREETING) or None
        self.file_system_prompt: str | None = header.get(PPGGUF.SYSTEM_PROMPT)
        self.baked = header.baked
        default_system = None if self.baked else self.file_system_prompt
        self.system_prompt: str | None = system if system is not None else default_system
        self.template = header.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) or CHATML_TEMPLATE
        self.sampling = {**DEFAULT_SAMPLING, **sampling_from_metadata(header.values())}
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
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            llm = open_gguf(self.path, n_ctx=self.n_ctx, threads=threads, seed=seed)
        except ValueError as err:
            raise UserError(f"llama.cpp cannot load '{self.path}': {err}") from None
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        # The file's template, read exactly, renders both what we count and what we send.
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

    def persona_note(self) -> str | None:
        """Where the character comes from, for a file whose weights carry it; None for a prompted file."""
        if not self.baked:
            return None
        sent = ("your system prompt is sent" if self.system_prompt is not None
                else "the file's short prompt is sent, not the persona prompt")
        return f"({self.name} is baked into the weights: {sent})"

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
            "baked": self.baked,
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
