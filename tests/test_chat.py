"""`ppgguf chat` and ChatSession on a tiny random character GGUF (replies are gibberish: structure only)."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from ppgguf.cli import app
from ppgguf.errors import UserError
from ppgguf.use.chat import ChatSession
from ppgguf.use.repl import run_repl

from npc_fixture import GREETING, NAME, SYSTEM_PROMPT, build_npc


@pytest.fixture(scope="module")
def npc(tmp_path_factory):
    return build_npc(tmp_path_factory.mktemp("npc"))


@pytest.fixture(scope="module")
def session(npc):
    s = ChatSession(npc, n_ctx=512, max_tokens=6, threads=1)
    yield s
    s.close()


def test_cli_piped_hello_stats_quit(npc):
    result = CliRunner().invoke(app, ["chat", str(npc), "--max-tokens", "6", "--ctx", "512"],
                                input="Hello there\n/stats\n/quit\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == GREETING
    assert "you>" not in result.stdout  # piped: no prompt characters
    stats = [line for line in lines if "tokens/s" in line]
    assert len(stats) == 1 and "/ 512 tokens" in stats[0]
    assert lines.index(stats[0]) >= 2  # greeting, reply, then stats


def test_cli_json_exits_at_eof(npc):
    result = CliRunner().invoke(app, ["chat", str(npc), "--json", "--max-tokens", "4", "--ctx", "512",
                                      "--system", "You are a teapot."], input="Hi\nWho are you?\n")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert objects[0] == {"role": "assistant", "content": GREETING, "greeting": True}
    replies = objects[1:]
    assert len(replies) == 2
    for r in replies:
        assert r["role"] == "assistant" and isinstance(r["content"], str)
        assert 0 <= r["tokens"] <= 4 and r["tokens_per_second"] >= 0


def test_cli_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["chat", str(tmp_path / "nope.gguf")], input="")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_session_uses_baked_prompt_and_greeting(session):
    session.reset()
    assert session.name == NAME
    assert session.system_prompt == SYSTEM_PROMPT  # read exactly from ppgguf.system_prompt
    assert session.messages() == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "assistant", "content": GREETING},
    ]
    assert session.render().startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n")


def test_repl_commands_and_save(session, tmp_path):
    session.reset()
    out, err = io.StringIO(), io.StringIO()
    target = tmp_path / "talk.json"
    code = run_repl(session, lines=["hello", "/save " + str(target), "/help", "/bogus", "/quit", "never sent"],
                    out=out, err=err, interactive=False)
    assert code == 0
    assert "/reset" in out.getvalue() and "unknown command /bogus" in err.getvalue()
    saved = json.loads(target.read_text(encoding="utf-8"))
    roles = [m["role"] for m in saved["messages"]]
    assert roles == ["system", "assistant", "user", "assistant"]
    assert saved["messages"][0]["content"] == SYSTEM_PROMPT
    assert saved["messages"][2]["content"] == "hello"
    assert saved["n_ctx"] == 512 and saved["character"] == NAME

    run_repl(session, lines=["/system You are a teapot.", "/stats"], out=out, err=err, interactive=False)
    assert session.messages()[0] == {"role": "system", "content": "You are a teapot."}
    assert len(session.history) == 1  # reset back to the greeting
    assert "no reply yet; context" in out.getvalue()
    run_repl(session, lines=["/reset"], out=out, err=err, interactive=False)
    session.set_system(SYSTEM_PROMPT)


def test_history_is_trimmed_never_the_system_prompt(npc):
    s = ChatSession(npc, system="Be brief.", n_ctx=128, max_tokens=6, threads=1)
    try:
        for i in range(5):
            s.send(f"message number {i}: tell me about the wind and the sails and the sea, captain")
            assert s.count_tokens(s.messages()[:-1]) <= s.n_ctx  # what was sent fitted
        assert s.dropped_messages > 0
        msgs = s.messages()
        assert msgs[0] == {"role": "system", "content": "Be brief."}
        assert msgs[1]["role"] == "user"  # whole turns dropped, oldest first
        assert msgs[-2]["content"].startswith("message number 4")
        assert s.stats()["n_ctx"] == 128

        before = list(s.history)
        with pytest.raises(UserError, match="does not fit"):
            s.send("word " * 200)
        assert s.history == before
    finally:
        s.close()


def test_trim_keeps_prompt_within_budget(session):
    session.reset()
    session.history += [{"role": "user", "content": "x " * 60}, {"role": "assistant", "content": "y " * 60}] * 6
    session.history.append({"role": "user", "content": "last"})
    dropped = session.trim()
    assert dropped > 0
    assert session.count_tokens() <= session.n_ctx - session.reply_budget()
    assert session.messages()[0]["content"] == SYSTEM_PROMPT
    assert session.history[0]["role"] == "user" and session.history[-1]["content"] == "last"
    session.reset()


def test_ctrl_c_in_chat_says_interrupted_only(npc, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ppgguf.use.repl.run_repl", interrupted)
    result = CliRunner().invoke(app, ["chat", str(npc), "--max-tokens", "4", "--ctx", "512"], input="Hi\n")
    assert result.exit_code == 130
    assert "interrupted" in result.output and "run directory" not in result.output
