"""The `external` condition against a real OpenAI-compatible server (`python -m loop.serve` on
loopback, a separate process serving a tiny teacher), the server's contract, and a resume that
adds conditions to a finished evaluation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from loop.core.config import PROJECT_ROOT, ConfigError
from loop.evaluate import evaluate
from teacher.config import EndpointConfig, SamplingSettings
from teacher.external import EndpointError, EndpointGenerator
from tests.conftest import compose_run
from tests.loop.test_evaluate import write_passages

KEY = "sk-test-secret-4242"


@pytest.fixture(scope="module")
def server(tiny_qwen2, tmp_path_factory):
    """`loop.serve` with the tiny Qwen2 teacher on a free port, requiring KEY; yields its URL."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loop.serve", f"teacher.path={tiny_qwen2}", "teacher.name=tiny",
             "serve.port=0", "serve.key_env=SEAL_TEST_SERVE_KEY", "serve.max_tokens=64"],
            stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
            env={**os.environ, "SEAL_TEST_SERVE_KEY": KEY})
    try:
        deadline = time.monotonic() + 180
        while "serving 'tiny' at " not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"loop.serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        line = next(x for x in log.read_text().splitlines() if "serving 'tiny' at " in x)
        yield line.split(" at ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url: str, body, key: str | None = KEY, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"}
                                                         if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                    timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def announce(server: str, length: int) -> tuple[int, dict]:
    """A request that announces a body of `length` bytes: refused from its headers, unread."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(server)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.putrequest("POST", f"{where.path}/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_server_answers_like_openai_and_refuses_bad_requests(server):
    ok, reply = post(f"{server}/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "Passage: Paris."}],
        "max_tokens": 6, "seed": 7, "temperature": 1.0, "top_p": 0.95, "n": 2})
    assert ok == 200 and reply["object"] == "chat.completion" and len(reply["choices"]) == 2
    assert all(isinstance(c["message"]["content"], str) for c in reply["choices"])
    assert reply["usage"]["completion_tokens"] <= 12
    again = post(f"{server}/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "Passage: Paris."}],
        "max_tokens": 6, "seed": 7, "temperature": 1.0, "top_p": 0.95, "n": 2})[1]
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in reply["choices"]]
    status, text = post(f"{server}/completions", {"model": "tiny", "prompt": "Paris is",
                                                  "max_tokens": 4, "temperature": 0})
    assert status == 200 and isinstance(text["choices"][0]["text"], str)

    bad = {"wrong key": post(f"{server}/completions", {"prompt": "x"}, key="sk-wrong"),
           "no key": post(f"{server}/completions", {"prompt": "x"}, key=None),
           "model": post(f"{server}/completions", {"model": "gpt-9", "prompt": "x"}),
           "json": post(f"{server}/completions", None, raw=b"{not json"),
           "nesting": post(f"{server}/completions", None, raw=b"[" * 100_000),
           "max_tokens": post(f"{server}/completions", {"prompt": "x", "max_tokens": 65}),
           "temperature": post(f"{server}/completions", {"prompt": "x", "temperature": "hot"}),
           "messages": post(f"{server}/chat/completions", {"messages": "hi"}),
           "route": post(f"{server}/embeddings", {"input": "x"}),
           "too big": announce(server, 1_000_001)}
    assert {k: s for k, (s, _) in bad.items()} == {
        "wrong key": 401, "no key": 401, "model": 400, "json": 400, "nesting": 400,
        "max_tokens": 400, "temperature": 400, "messages": 400, "route": 404, "too big": 413}
    assert all("message" in reply["error"] for _, reply in bad.values())
    assert post(f"{server}/completions", {"prompt": "x", "max_tokens": 2})[0] == 200  # still up


def external_run(tmp_path, server, *overrides, conditions="[base,teacher_base,external]"):
    return compose_run(f"task.data={write_passages(tmp_path)}", "task.split=all", "tracking.enabled=false",
                       "student.train.epochs=2", "student.eval.max_new_tokens=4",
                       "teacher.sampling.max_new_tokens=12", "teacher.sampling.batch_size=1",
                       "evaluate.resamples=200", f"evaluate.conditions={conditions}",
                       f"evaluate.external.url={server}", "evaluate.external.model=tiny",
                       "evaluate.external.key_env=SEAL_TEST_SERVE_KEY", *overrides)


def test_external_condition_equals_the_same_teacher_in_process(tiny_llama, tiny_qwen2, server,
                                                               tmp_path, monkeypatch):
    """The served teacher and the in-process teacher, asked with the same seeds, write the same
    self-edits; absorbed with the same seeds they score the same: the rows are paired."""
    monkeypatch.setenv("SEAL_TEST_SERVE_KEY", KEY)
    run = external_run(tmp_path, server, f"student.path={tiny_llama}",
                       f"teacher.path={tiny_qwen2}")
    out = tmp_path / "run"
    results = evaluate(run, out)
    edits = [json.loads(x) for x in (out / "self_edits.jsonl").read_text().splitlines()]
    by = {c: [(e["context"], e["seed"], e["text"]) for e in edits if e["condition"] == c]
          for c in ("teacher_base", "external")}
    assert len(by["external"]) == 3 and by["external"] == by["teacher_base"]
    assert any(text for _, _, text in by["external"])
    summary = results["summary"]
    assert summary["external"]["logprob"]["estimate"] == summary["teacher_base"]["logprob"]["estimate"]
    assert summary["external"]["logprob"]["vs_teacher_base"]["mean"] == 0
    assert KEY not in (out / "run.json").read_text()  # the key is never recorded


def test_endpoint_problems_fail_at_launch_with_clear_errors(tiny_llama, server, tmp_path,
                                                            monkeypatch):
    base = (f"student.path={tiny_llama}",)
    monkeypatch.setenv("SEAL_TEST_SERVE_KEY", "sk-not-the-key-777")
    with pytest.raises(EndpointError, match=r"refused the key in \$SEAL_TEST_SERVE_KEY \(HTTP 401\)"
                       ) as e:
        evaluate(external_run(tmp_path, server, *base, conditions="[base,external]"), tmp_path / "a")
    assert "sk-not-the-key-777" not in str(e.value)
    monkeypatch.setenv("SEAL_TEST_SERVE_KEY", KEY)
    with pytest.raises(EndpointError, match="does not serve 'gpt-9'; it serves tiny"):
        evaluate(external_run(tmp_path, server, *base, "evaluate.external.model=gpt-9",
                              conditions="[base,external]"), tmp_path / "b")
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    with pytest.raises(EndpointError, match=f"cannot reach {closed}/models .*is the server running"):
        evaluate(external_run(tmp_path, closed, *base, conditions="[base,external]"), tmp_path / "c")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(EndpointError, match="set evaluate.external.url"):
        evaluate(external_run(tmp_path, "null", *base, conditions="[base,external]"), tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")  # refused before any run folder


class Garbage(BaseHTTPRequestHandler):
    """A misbehaving endpoint: 200 replies that are not completions, to a client that must
    record them as empty self-edits rather than crash or evaluate anything."""

    replies = [b'{"choices": []}', b"[" * 50_000, b"not json", b'{"choices": [{"message": '
               b'{"content": null}}]}', b'{"choices": [{"message": {"content": " ok "}}]}',
               b'{"choices": [{"message": {"content": "1. a\\n2. b"}, "finish_reason": "length"}]}']

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = self.replies[self.server.count % len(self.replies)]
        self.server.count += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_unusable_replies_become_empty_self_edits():
    httpd = HTTPServer(("127.0.0.1", 0), Garbage)
    httpd.count = 0
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        gen = EndpointGenerator(EndpointConfig(url=f"http://127.0.0.1:{httpd.server_port}/v1",
                                               model="m", concurrency=1),
                                SamplingSettings(max_new_tokens=8))
        got = gen.sample(["p"] * 6, list(range(6)))
        assert [s.text for s in got] == ["", "", "", "", "ok", "1. a\n2. b"]
        assert [s.cut for s in got] == [False] * 5 + [True]  # finish_reason "length": cut
        assert gen.empty == 4
    finally:
        httpd.shutdown()


def test_a_resume_adds_conditions_and_keeps_what_is_recorded(tiny_llama, tiny_qwen2, server,
                                                              tmp_path, monkeypatch):
    """An evaluation of base and passage, resumed with `external` added (and a teacher adapter
    setting that only the new row uses): the recorded rows are kept byte for byte, only the new
    row is computed, and run.json then records the longer command."""
    monkeypatch.setenv("SEAL_TEST_SERVE_KEY", KEY)
    models = (f"student.path={tiny_llama}", f"teacher.path={tiny_qwen2}")
    first = external_run(tmp_path, server, *models, conditions="[base,passage]")
    out = tmp_path / "run"
    before = evaluate(first, out)
    recorded = (out / "scores.jsonl").read_text()

    more = external_run(tmp_path, server, *models, "teacher.adapter=/not/used",
                        conditions="[base,passage,external]")
    with pytest.raises(ConfigError, match=r"another config \(student.train.epochs: 2 -> 3\)"):
        evaluate(dataclasses.replace(more, resume=str(out), student=dataclasses.replace(
            more.student, train=dataclasses.replace(more.student.train, epochs=3))), out)
    fewer = dataclasses.replace(first, resume=str(out), evaluate=dataclasses.replace(
        first.evaluate, conditions=["base"]))
    with pytest.raises(ConfigError, match="evaluate.conditions"):
        evaluate(fewer, out)

    after = evaluate(dataclasses.replace(more, resume=str(out)), out)
    assert (out / "scores.jsonl").read_text().startswith(recorded)
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["condition"] for r in rows) == ["base"] * 3 + ["external"] * 3 + ["passage"] * 3
    assert after["summary"]["passage"]["logprob"]["estimate"] == \
        before["summary"]["passage"]["logprob"]["estimate"]
    assert "vs_passage" in after["summary"]["external"]["logprob"]
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["evaluate.conditions"] == ["base", "passage", "external"]


def test_a_prompt_with_a_cue_asks_the_endpoint_to_continue_the_assistants_turn():
    """The self-qa cue is the start of the assistant's turn: with continue_cue a chat endpoint
    gets it as the last message with vLLM's continue_final_message; by default (hosted APIs
    refuse unknown keys) it ends the user's message; /completions gets the text with the cue at
    its end, as a base model continues."""
    from loop.tasks.squad.prompts import self_edit_prompt
    from teacher.prompts import as_text

    gen = EndpointGenerator(EndpointConfig(url="http://127.0.0.1:9/v1", model="m",
                                           continue_cue=True),
                            SamplingSettings(max_new_tokens=8))
    chat = self_edit_prompt("self-qa", "T", "C")
    hosted = EndpointGenerator(EndpointConfig(url="http://127.0.0.1:9/v1", model="m"),
                               SamplingSettings(max_new_tokens=8))._payload(chat, 0)[1]
    assert hosted["messages"] == [{"role": "user", "content": as_text(chat)}]  # the default
    assert "continue_final_message" not in hosted
    path, payload = gen._payload(chat, 0)
    assert path == "/chat/completions" and payload["messages"][-1] == {
        "role": "assistant", "content": "Question 1: "}
    assert payload["continue_final_message"] is True and payload["add_generation_prompt"] is False
    _, plain = gen._payload(self_edit_prompt("implications", "T", "C"), 0)
    assert "continue_final_message" not in plain
    text = EndpointGenerator(EndpointConfig(url="http://127.0.0.1:9/v1", model="m", chat=False),
                             SamplingSettings(max_new_tokens=8))
    assert text._payload(chat, 0) == ("/completions", {**{k: v for k, v in plain.items()
                                                          if k != "messages"},
                                                       "prompt": as_text(chat)})
