"""`python -m loop.serve`: the teacher, optionally with a trained adapter, as an OpenAI-compatible
endpoint, so other tools (and `loop.evaluate`'s `external` row) can ask it for self-edits.

    python -m loop.serve teacher=qwen0.5b teacher.adapter=outputs/<a loop.run folder>
    curl http://127.0.0.1:8000/v1/models
    python -m loop.evaluate 'evaluate.conditions=[base,passage,external]' \\
        evaluate.external.url=http://127.0.0.1:8000/v1 evaluate.external.model=qwen0.5b

Routes: `GET /v1/models`; `POST /v1/completions` (the prompt as raw text); `POST
/v1/chat/completions` (the messages through the teacher's chat template). A request's `seed`
decides its sample exactly as in `loop.run` (the transformers backend's per-row generator), so
the same prompt, seed and settings give the same text here as in-process; `temperature`,
`top_p` and `max_tokens` are per request, `max_tokens` at most `serve.max_tokens`. Requests are
answered one at a time (one model behind one lock). The server binds 127.0.0.1 unless
`serve.host` says otherwise; `serve.key_env=<VARIABLE>` makes it require that variable's value
as a bearer key. Request bodies over `serve.max_request_bytes` are refused unread.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hydra

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)
from loop.core.checks import check_settings
from loop.core.cli import check_models, launch
from loop.core.config import CONF_DIR, ConfigError, RunConfig, register

log = logging.getLogger(__name__)
register()


class BadRequest(ValueError):
    """A request the server answers with HTTP 400 and an OpenAI-style error object."""


class Engine:
    """The loaded teacher and how one request becomes its completions."""

    def __init__(self, run: RunConfig):
        from loop.core.adapters import resolve_adapter
        from loop.core.evaluation import load_generator

        self.run, self.serve = run, run.serve
        self.generator = load_generator(run)
        if run.teacher.adapter:
            self.generator.use_adapter(resolve_adapter(run.teacher.adapter, run))
        self.name = run.serve.name or run.teacher.name
        self.lock = threading.Lock()

    def complete(self, body: dict, chat: bool) -> dict:
        from teacher.config import SamplingSettings
        from teacher.generate import sample
        from teacher.prompts import render

        model = body.get("model", self.name)
        if model != self.name:
            raise BadRequest(f"this server serves '{self.name}', not '{model}'")
        tokenizer = self.generator.tokenizer
        if chat:
            messages = body.get("messages")
            if not (isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in messages)):
                raise BadRequest("`messages` must be a non-empty list of {role, content} strings")
            if not getattr(tokenizer, "chat_template", None):
                raise BadRequest(f"'{self.name}' has no chat template: use /v1/completions")
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise BadRequest("`prompt` must be one string")
        if body.get("stop"):
            raise BadRequest("`stop` is not supported by this server")
        n = _number(body, "n", 1, int, 1, 16)
        max_tokens = _number(body, "max_tokens", self.serve.max_tokens, int, 1,
                             self.serve.max_tokens)
        settings = SamplingSettings(temperature=_number(body, "temperature", 1.0, float, 0, 2),
                                    top_p=_number(body, "top_p", 1.0, float, 1e-6, 1),
                                    max_new_tokens=max_tokens, batch_size=n)
        seed = body.get("seed")
        if seed is None:
            seed = random.getrandbits(31)
        elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63 - n:
            raise BadRequest("`seed` must be a non-negative integer")
        with self.lock, self.generator.merged() as model:  # the adapter merged per call
            samples = sample(model, tokenizer, [prompt] * n, [seed + i for i in range(n)],
                             instruct=chat, settings=settings)
        rendered = render(tokenizer, prompt, chat)
        prompt_tokens = len(tokenizer(rendered, add_special_tokens=not chat)["input_ids"])
        used = [len(tokenizer(s.text, add_special_tokens=False)["input_ids"]) for s in samples]
        choices = [{"index": i, "finish_reason": "length" if s.cut else "stop",
                    **({"message": {"role": "assistant", "content": s.text}} if chat
                       else {"text": s.text})} for i, s in enumerate(samples)]
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(used),
                          "total_tokens": prompt_tokens + sum(used)}}


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)) or not low <= value <= high:
        raise BadRequest(f"`{key}` must be {'an integer' if kind is int else 'a number'} "
                         f"in [{low}, {high}], got {value!r}")
    return kind(value)


def handler(engine: Engine):
    key = os.environ.get(engine.serve.key_env) if engine.serve.key_env else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "seal-serve"

        def log_message(self, fmt, *args):  # through logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": status}})

        def _authorised(self) -> bool:
            if key is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return True
            self._error(401, "a valid bearer key is required", "authentication_error")
            return False

        def do_GET(self):  # noqa: N802 (http.server's name)
            if not self._authorised():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": engine.name, "object": "model", "owned_by": "seal"}]})
            else:
                self._error(404, f"no route {self.path}", "not_found_error")

        def do_POST(self):  # noqa: N802
            if not self._authorised():
                return
            route = self.path.rstrip("/")
            if route not in ("/v1/completions", "/v1/chat/completions"):
                self._error(404, f"no route {self.path}", "not_found_error")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= engine.serve.max_request_bytes:
                self._error(413 if length > 0 else 400, "the body must be JSON of at most "
                            f"{engine.serve.max_request_bytes} bytes with a Content-Length")
                self.close_connection = True
                return
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                self._send(200, engine.complete(body, chat=route.endswith("chat/completions")))
            except (BadRequest, ValueError, RecursionError) as e:
                self._error(400, str(e) if isinstance(e, BadRequest) else f"bad JSON: {e}")
            except Exception as e:  # the server stays up; the client sees what failed
                log.exception("request failed")
                self._error(500, f"{type(e).__name__}: {e}", "server_error")

    return Handler


def serve(run: RunConfig, ready=None) -> None:
    """Load the teacher and answer requests until interrupted (Ctrl-C)."""
    check_settings(run)
    if run.teacher.backend != "transformers":
        raise ConfigError("loop.serve serves the transformers backend; for vLLM use `vllm serve "
                          "<model> --enable-lora --lora-modules teacher=<adapter folder>`")
    if run.serve.key_env and not os.environ.get(run.serve.key_env):
        raise ConfigError(f"serve.key_env={run.serve.key_env}, but ${run.serve.key_env} is unset")
    check_models(run, roles=("teacher",))
    engine = Engine(run)
    try:
        server = ThreadingHTTPServer((run.serve.host, run.serve.port), handler(engine))
    except OSError as e:
        raise ConfigError(f"cannot listen on {run.serve.host}:{run.serve.port} ({e.strerror}); "
                          "choose another serve.port (0: any free port)") from None
    host, port = server.server_address[:2]
    print(f"serving '{engine.name}' at http://{host}:{port}/v1 "
          f"(adapter: {engine.generator.adapter or 'none'}); Ctrl-C stops", flush=True)
    if ready:
        ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
def main(cfg) -> None:
    launch(cfg, lambda run, out_dir: serve(run), folder=False)


if __name__ == "__main__":
    main()
