"""Tokenizer and chat template, exactly as llama.cpp will see them in the exported file.

ppgguf never tokenizes with a Python tokenizer: text becomes ids through llama.cpp itself, reading
the same `tokenizer.*` GGUF metadata that the exported file carries. Calibration, scoring and the
validation gate therefore see the token ids that llama.cpp, Ollama or LM Studio will produce.

That metadata is a `TokenizerSpec` (ppgguf.llama.tokenizer_spec): copied verbatim from a base GGUF,
or converted here from a Hugging Face `tokenizer.json` (byte-level BPE, the tokenizer of Llama 3,
Qwen2 and SmolLM2).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import UserError
from ..llama.runtime import captured_stderr
from ..llama.tokenizer_spec import TokenizerSpec

# Pre-tokenizer regexes of the byte-level BPE tokenizers we know -> llama.cpp's `tokenizer.ggml.pre`.
# convert_hf_to_gguf identifies them by hashing a tokenization; matching the regex is the same idea
# without needing the Python tokenizer.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "split:" + _LLAMA3_REGEX: "llama-bpe",
    "split:" + _QWEN2_REGEX: "qwen2",
    "digits+bytelevel": "smollm",
    "bytelevel": "gpt-2",
}


def _pre_tokenizer_fingerprint(pre: dict | None) -> str:
    if pre is None:
        return "none"
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = []
    for part in parts:
        kind = part.get("type")
        if kind == "Split":
            pattern = part.get("pattern", {})
            kinds.append("split:" + (pattern.get("Regex") or pattern.get("String") or ""))
        elif kind == "ByteLevel":
            if not kinds or not kinds[-1].startswith("split:"):
                kinds.append("bytelevel")
        elif kind == "Digits":
            kinds.append("digits")
        else:
            kinds.append(str(kind).lower())
    return "+".join(kinds)


def spec_from_hf_dir(path: Path, vocab_size: int) -> TokenizerSpec:
    """Convert a Hugging Face byte-level BPE `tokenizer.json` to llama.cpp tokenizer metadata."""
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        raise UserError(f"{path}: no tokenizer.json; ppgguf needs the fast (byte-level BPE) tokenizer file")
    data = json.loads(tok_file.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(
            f"{tok_file}: tokenizer type '{model.get('type')}' is not supported; "
            "ppgguf converts byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2)"
        )
    fingerprint = _pre_tokenizer_fingerprint(data.get("pre_tokenizer"))
    pre = PRE_TOKENIZERS.get(fingerprint)
    if pre is None:
        raise UserError(
            f"{tok_file}: unknown pre-tokenizer; llama.cpp would split text differently. "
            f"Known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}"
        )

    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    n_tokens = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n_tokens):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    spec = TokenizerSpec()
    T, V = gguf.Keys.Tokenizer, gguf.GGUFValueType
    spec.set(T.MODEL, "gpt2", V.STRING)
    spec.set(T.PRE, pre, V.STRING)
    spec.set(T.LIST, tokens, V.ARRAY, V.STRING)
    spec.set(T.TOKEN_TYPE, types, V.ARRAY, V.INT32)
    spec.set(T.MERGES, merges, V.ARRAY, V.STRING)

    # Special token ids, add_bos/add_eos and the chat template, read by gguf-py's own helper.
    special = gguf.SpecialVocab(path, load_merges=False, n_vocab=n_tokens)
    for typ, tid in special.special_token_ids.items():
        spec.set(f"tokenizer.ggml.{typ}_token_id", int(tid), V.UINT32)
    for typ, value in special.add_special_token.items():
        spec.set(f"tokenizer.ggml.add_{typ}_token", bool(value), V.BOOL)
    template = special.chat_template
    if isinstance(template, str) and template:
        spec.set(T.CHAT_TEMPLATE, template, V.STRING)
    return spec


# A ChatML template for bases that carry none (SmolLM2, Qwen2 and many others use ChatML).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str):
    raise TemplateError(message)


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool, **special) -> str:
    """Render a chat template the way transformers does, inside jinja2's sandbox."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special
        )
    except TemplateError as err:
        raise UserError(f"the model's chat template failed to render: {err}") from None


class ChatTokenizer:
    """llama.cpp tokenization of plain text and chat conversations for one vocabulary."""

    def __init__(self, spec: TokenizerSpec, vocab_gguf: Path):
        import llama_cpp

        self.spec = spec
        self.template = spec.chat_template or CHATML_TEMPLATE
        with captured_stderr():
            self._llm = llama_cpp.Llama(str(vocab_gguf), vocab_only=True, verbose=False)
        tokens = spec.tokens
        self.bos_id = spec.get(gguf.Keys.Tokenizer.BOS_ID)
        self.eos_id = spec.get(gguf.Keys.Tokenizer.EOS_ID)
        self.add_bos = bool(spec.get(gguf.Keys.Tokenizer.ADD_BOS, False)) and self.bos_id is not None
        self.special = {
            "bos_token": tokens[self.bos_id] if self.bos_id is not None else "",
            "eos_token": tokens[self.eos_id] if self.eos_id is not None else "",
        }

    @property
    def n_vocab(self) -> int:
        return len(self.spec.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, BOS added when the vocabulary asks for it."""
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._llm.detokenize(ids).decode("utf-8", errors="replace")

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render_chat_template(self.template, messages, add_generation_prompt, **self.special)

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
        return self.encode(self.render(messages, add_generation_prompt))
