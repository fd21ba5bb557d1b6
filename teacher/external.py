"""Self-edits from an OpenAI-compatible endpoint: a hosted model, a `vllm serve`, or this
project's own `python -m loop.serve` (the `external` row of `loop.evaluate`).

    gen = EndpointGenerator(EndpointConfig(url="http://127.0.0.1:8000/v1", model="qwen0.5b"),
                            SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=512))
    gen.check()                               # at launch: reachable, key accepted, model served
    texts = gen.sample(prompts, seeds)        # one request per prompt, `concurrency` in flight

Each request carries its sample's seed (`seed`, honoured by vLLM and by `loop.serve`; hosted
APIs treat it as best effort), the teacher's temperature, top_p and max_new_tokens, and `n=1`.
The key comes from the environment variable `key_env` and goes only into the Authorization
header: it is never stored, logged, or shown in an error (messages are scrubbed of it).

A response is data: its body is read up to `max_response_bytes`, parsed as JSON, and only the
completion's text is taken. A reply without a usable text (malformed JSON, no choices) becomes
an empty self-edit, which is recorded and scored like any other, with a warning. An endpoint
that cannot be reached, or that keeps failing after `retries`, stops the run with
`EndpointError`; the self-edits already recorded are kept and a resume continues from them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from teacher.config import EndpointConfig, SamplingSettings
from teacher.generate import Sample
from teacher.prompts import Prompt, as_messages, as_text, cue

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The endpoint cannot be used: unreachable, refusing the key, or not serving the model."""


def resolve(cfg: EndpointConfig) -> tuple[str, str]:
    """(base url, model): from the config, else $OPENAI_BASE_URL / $SEAL_EXTERNAL_MODEL."""
    url = (cfg.url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
    model = cfg.model or os.environ.get("SEAL_EXTERNAL_MODEL") or ""
    if not url:
        raise EndpointError("the external condition needs an endpoint: set "
                            "evaluate.external.url=http://host:port/v1 (or $OPENAI_BASE_URL)")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"evaluate.external.url={url} is not an http(s) URL")
    if not model:
        raise EndpointError("the external condition needs a model name: set "
                            "evaluate.external.model=<name the endpoint serves> "
                            "(or $SEAL_EXTERNAL_MODEL)")
    return url, model


class EndpointGenerator:
    """The `Generator` interface over an OpenAI-compatible HTTP API."""

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, cfg: EndpointConfig, settings: SamplingSettings):
        self.cfg, self.settings = cfg, settings
        self.url, self.model = resolve(cfg)
        self._key = os.environ.get(cfg.key_env) or None
        self.empty = 0  # replies without a usable text so far

    # -- the Generator interface ---------------------------------------------------------------

    def use_adapter(self, path) -> None:
        if path is not None:
            raise EndpointError("an external endpoint serves its own weights; it takes no adapter")

    def sample(self, prompts: list[Prompt], seeds: list[int]) -> list[Sample]:
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            return list(pool.map(self._complete, prompts, seeds))

    # -- requests ----------------------------------------------------------------------------

    def check(self) -> None:
        """Fail at launch: the endpoint answers, accepts the key and serves `model`.
        (An endpoint without GET /models is let through with a warning.)"""
        try:
            status, body = self._request("GET", "/models", None, retries=0)
        except EndpointError as e:
            raise EndpointError(f"{e}; is the server running, and is evaluate.external.url "
                                "right?") from None
        if status == 404:
            log.warning("%s/models is not served; cannot check that '%s' is", self.url, self.model)
            return
        if status in (401, 403):
            where = (f"the key in ${self.cfg.key_env}" if self._key
                     else f"no key (${self.cfg.key_env} is unset)")
            raise EndpointError(f"{self.url} refused {where} (HTTP {status})")
        if status != 200:
            raise EndpointError(f"GET {self.url}/models answered HTTP {status}: {self._snippet(body)}")
        try:
            served = [m["id"] for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("%s/models answered something that is not a model list", self.url)
            return
        if self.model not in served:
            raise EndpointError(f"{self.url} does not serve '{self.model}'; it serves "
                                f"{', '.join(served[:10]) or 'nothing'}: set evaluate.external.model")

    def _payload(self, prompt: Prompt, seed: int) -> tuple[str, dict]:
        s = self.settings
        payload = {"model": self.model, "temperature": s.temperature, "top_p": s.top_p,
                   "max_tokens": s.max_new_tokens, "seed": seed, "n": 1}
        if self.cfg.chat:
            messages = as_messages(prompt)
            if cue(prompt) is not None and self.cfg.continue_cue:  # continued (vLLM's keys)
                payload |= {"continue_final_message": True, "add_generation_prompt": False}
            elif cue(prompt) is not None:  # an API without them: the cue ends the user's text
                messages = [*messages[:-2], {"role": "user", "content": as_text(prompt[-2:])}]
            return "/chat/completions", {**payload, "messages": messages}
        return "/completions", {**payload, "prompt": as_text(prompt)}

    def _complete(self, prompt: Prompt, seed: int) -> Sample:
        path, payload = self._payload(prompt, seed)
        status, body = self._request("POST", path, payload, retries=self.cfg.retries)
        if status != 200:
            raise EndpointError(f"POST {self.url}{path} answered HTTP {status}: "
                                f"{self._snippet(body)}")
        text, finish = completion_text(body, chat=self.cfg.chat)
        if text is None:
            self.empty += 1
            log.warning("%s%s: a reply without a completion text (%s); recorded as an empty "
                        "self-edit", self.url, path, self._snippet(body))
            return Sample("")
        return Sample(text.strip(), cut=finish == "length")

    def _request(self, method: str, path: str, payload: dict | None,
                 retries: int) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = json.dumps(payload).encode() if payload is not None else None
        for attempt in range(retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                             method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                    return response.status, self._read(response)
            except urllib.error.HTTPError as e:
                status, body = e.code, self._read(e)
                if status not in self.RETRY_STATUS or attempt == retries:
                    return status, body
                why = f"HTTP {status}"
            except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
                why = str(getattr(e, "reason", e))
                if attempt == retries:
                    raise EndpointError(self._scrub(
                        f"cannot reach {self.url}{path} ({why}) after {retries + 1} "
                        f"attempt{'s' if retries else ''}")) from None
            delay = min(30.0, 2.0 ** attempt)
            log.warning("%s%s: %s; retrying in %.0f s", self.url, path, self._scrub(why), delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _read(self, response) -> bytes:
        body = response.read(self.cfg.max_response_bytes + 1)
        if len(body) > self.cfg.max_response_bytes:
            raise EndpointError(f"{self.url}: a response over evaluate.external.max_response_bytes "
                                f"({self.cfg.max_response_bytes}); refused unread")
        return body

    def _snippet(self, body: bytes) -> str:
        return self._scrub(body[:300].decode("utf-8", "replace").strip()) or "(empty body)"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def completion_text(body: bytes, chat: bool) -> tuple[str | None, str | None]:
    """The first choice's text of an OpenAI-style reply (None when there is none) and its
    finish_reason ("length": cut by max_tokens)."""
    try:
        choice = json.loads(body)["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError,
            RecursionError):  # nesting bombs too
        return None, None
    return (text if isinstance(text, str) else None), (finish if isinstance(finish, str) else None)
