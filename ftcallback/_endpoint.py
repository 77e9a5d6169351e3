"""Measure a model where it is served: any OpenAI-compatible HTTP endpoint, no Trainer, no torch.

:func:`measure_endpoint` streams ``/v1/chat/completions`` or ``/v1/completions`` (``"stream": true``)
from vLLM, llama.cpp's server, TGI, Ollama or anything else that speaks the OpenAI protocol, with
the standard library only (``http.client`` and a small server-sent-events parser), and returns the
same :class:`~ftcallback._measurement.Measurement` that :func:`ftcallback.measure` returns, so a
baseline and a fine-tuned checkpoint can be compared on the real serving stack.

Per request it records the time to first token (the first event carrying text), the arrival time of
every event carrying text (``token_times_s``, whose gaps are the inter-token latencies), end-to-end
latency, input and output tokens and whether the response ended by itself (``finish_reason``
``"stop"``) or was cut at ``max_new_tokens`` (``"length"``).

Token counts come from the server's ``usage`` when the stream carries it
(``stream_options.include_usage``); many servers do not send it in a stream, so then the
tokenizer counts the returned text, and one untimed non-streamed request per prompt asks the
server for its own ``usage``. Every count available for a request is checked against the
others and the outcome is kept in ``environment["token_counts"]``.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import platform
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ConfigError, MeasurementError
from ._measurement import Measurement, RequestSample
from ._prompts import encode_prompts, load_prompts, prompts_sha256, resolve_tokenizer

__all__ = ["BACKEND", "iter_sse_data", "measure_endpoint"]

logger = logging.getLogger("ftcallback.endpoint")

#: ``environment["backend"]`` of a measurement taken from a server.
BACKEND = "openai-endpoint"
_APIS = {"chat": "/chat/completions", "completions": "/completions"}
# Request fields measure_endpoint() sets itself: letting generation_kwargs set them would make the
# recorded settings lie or break the stream parsing.
_OWNED_FIELDS = {
    "model": "use the `model` argument",
    "messages": "the prompts come from the `prompts` argument",
    "prompt": "the prompts come from the `prompts` argument",
    "stream": "measure_endpoint() always streams",
    "stream_options": "measure_endpoint() asks for usage itself",
    "max_tokens": "use the `max_new_tokens` argument",
    "max_completion_tokens": "use the `max_new_tokens` argument",
    "n": "one choice per request is what is measured",
}
# Request fields that shape sampling, recorded as the decoding's parameters.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty", "presence_penalty")
# Greedy unless generation_kwargs says otherwise, like ftcallback.measure().
_DEFAULT_FIELDS: dict[str, Any] = {"temperature": 0.0}
_MAX_ERROR_BODY = 300
_MAX_EXAMPLES = 5


# ----------------------------------------------------------------- public API
def measure_endpoint(
    base_url: str,
    prompts: Sequence[str],
    *,
    model: str | None = None,
    api: Literal["chat", "completions"] = "chat",
    max_new_tokens: int = 128,
    generation_kwargs: Mapping[str, Any] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    concurrency: int = 1,
    tokenizer: Any = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    num_sample_outputs: int = 3,
    usage_check: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> Measurement:
    """Measure latency and output length of an OpenAI-compatible server on a probe of prompts.

    Each prompt is one streamed request (``"stream": true``), greedy unless ``generation_kwargs``
    says otherwise (``temperature`` 0), capped at ``max_new_tokens`` (``max_tokens``). With
    ``api="chat"`` each prompt is one user message and the server applies its chat template
    (recorded as ``apply_chat_template=True``, so the measurement is comparable with
    ``measure(..., apply_chat_template=True)`` on the same prompts); with ``"completions"`` the
    prompt is sent as raw text.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"`` (``/v1`` is appended unless present).
        prompts: the probe (a list of strings, or a ``.txt`` / ``.jsonl`` path as for ``measure``).
        model: the served model name sent in each request; default: the first id the server lists at
            ``/v1/models``.
        api: ``"chat"`` (``/v1/chat/completions``) or ``"completions"`` (``/v1/completions``).
        max_new_tokens: ``max_tokens`` of every request.
        generation_kwargs: extra request fields (``temperature``, ``top_p``, ``seed``, ``stop``, ...);
            they override the greedy default. Fields measure_endpoint() owns are refused.
        warmup: untimed requests before timing, sequential, cycling through the prompts.
        repeats: timed passes over all prompts.
        concurrency: requests in flight at once (one thread each). Latencies then include queueing
            in the server, as users under that load would see it.
        tokenizer: the served model's tokenizer (or a processor holding one), to count tokens when
            the stream carries no usage and to check the server's counts; optional.
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout_s: limit on connecting, on each wait for data, and on each whole request.
        num_sample_outputs: how many responses (the first prompts, last repeat) to keep as text.
        usage_check: when the stream carries no usage, send one untimed non-streamed request per prompt
            to get the server's own token counts (costs one request per prompt).
        clock: the clock every timestamp comes from (tests drive it).

    Returns:
        A :class:`~ftcallback._measurement.Measurement` with ``len(prompts) * repeats`` samples;
        ``environment`` names the backend, URL, API, served model, concurrency and the token-count check.

    Raises:
        ConfigError: an argument is out of range, the URL is not an http(s) URL, or
            ``generation_kwargs`` sets a field measure_endpoint() owns.
        PromptError: no prompts, or a prompt that is not a non-empty string.
        MeasurementError: the server cannot be reached, answers with an HTTP error, does not speak the
            OpenAI streaming protocol, or does not answer within ``timeout_s``.

    Example:
        >>> m = measure_endpoint("http://127.0.0.1:8000", ["Hello"], max_new_tokens=16)  # doctest: +SKIP
        >>> m.ttft_ms.p50 <= m.latency_ms.p50  # doctest: +SKIP
        True
    """
    wall_start = clock()
    if api not in _APIS:
        raise ConfigError(f"`api` must be 'chat' or 'completions', got {api!r}")
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("warmup", warmup, 0)
    _check_int("repeats", repeats, 1)
    _check_int("concurrency", concurrency, 1)
    _check_int("num_sample_outputs", num_sample_outputs, 0)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ConfigError(f"`timeout_s` must be a number > 0 (seconds), got {timeout_s!r}")
    if model is not None and (not isinstance(model, str) or not model):
        raise ConfigError(f"`model` must be a non-empty string (the served model name) or None, got {model!r}")
    extra = _check_generation_kwargs(generation_kwargs)
    prompt_list = load_prompts(prompts)
    if tokenizer is not None:
        tokenizer = resolve_tokenizer(tokenizer)
    client = _Client(base_url, api_key=api_key, timeout_s=float(timeout_s))

    listed = client.list_models()
    model_id = _choose_model(client, model, listed)
    chat = api == "chat"
    path = _APIS[api]
    body = {**_DEFAULT_FIELDS, **extra, "model": model_id, "max_tokens": max_new_tokens}
    logger.debug(
        "measure_endpoint: %s %s, model %r, %d prompts, warmup=%d, repeats=%d, concurrency=%d",
        client.url,
        api,
        model_id,
        len(prompt_list),
        warmup,
        repeats,
        concurrency,
    )

    def request(index: int) -> _Response:
        return client.stream(path, _request_body(body, prompt_list[index], chat), clock)

    warmup_latencies = []
    for w in range(warmup):
        response = request(w % len(prompt_list))
        warmup_latencies.append(response.end - response.start)

    jobs = [(r, i) for r in range(repeats) for i in range(len(prompt_list))]
    timed_start = clock()
    if concurrency == 1:
        responses = [request(i) for _, i in jobs]
    else:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ftcallback-endpoint") as pool:
            futures = [pool.submit(request, i) for _, i in jobs]
            try:
                responses = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()  # fail fast: in-flight requests end within timeout_s
                raise
    timed_wall = clock() - timed_start

    checks: dict[int, _Response] = {}
    if usage_check and not all(r.usage for r in responses):
        for i in range(len(prompt_list)):
            checks[i] = client.complete(path, _request_body(body, prompt_list[i], chat))

    counter = _TokenCounter(tokenizer, prompt_list, chat, checks)
    samples = []
    for (r, i), response in zip(jobs, responses, strict=True):
        samples.append(counter.sample(r, i, response, max_new_tokens))
    last = {i: resp for (r, i), resp in zip(jobs, responses, strict=True) if r == repeats - 1}
    served_as = next((resp.model for resp in responses if resp.model), None)

    measurement = Measurement(
        samples=tuple(samples),
        settings={
            "max_new_tokens": max_new_tokens,
            "generation_kwargs": _json_safe(extra),
            "warmup": warmup,
            "repeats": repeats,
            "batch_size": 1,
            "apply_chat_template": chat,
            "num_prompts": len(prompt_list),
            "prompts_sha256": prompts_sha256(prompt_list, chat),
        },
        model={
            "class": "OpenAI-compatible endpoint",
            "name_or_path": model_id,
            "device": client.url,
        },
        environment={
            "backend": BACKEND,
            "url": client.url,
            "api": api,
            "server_model": served_as or model_id,
            "server_models": listed[:10] if listed is not None else None,
            "concurrency": concurrency,
            "timed_wall_s": timed_wall,
            "token_counts": counter.report(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "ftcallback": _version(),
        },
        decoding=_decoding(body),
        warmup_latencies_s=tuple(warmup_latencies),
        peak_memory_bytes=None,
        sample_outputs=tuple(
            {"prompt_index": i, "prompt": prompt_list[i], "output": last[i].text}
            for i in sorted(last)
            if i < num_sample_outputs
        ),
        wall_time_s=clock() - wall_start,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    logger.info(
        "measured %s (%s, concurrency %d): %d requests, latency p50 %.1f ms, TTFT p50 %.1f ms, "
        "%.1f output tokens per response (counted by %s)",
        client.url,
        api,
        concurrency,
        len(samples),
        measurement.latency_ms.p50,
        measurement.ttft_ms.p50,
        measurement.output_tokens.mean,
        counter.output_source,
    )
    return measurement


def iter_sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The ``data`` of each server-sent event in ``lines``, as the SSE standard defines events.

    Lines may end with ``\\n``, ``\\r\\n`` or ``\\r``; ``data:`` lines of one event are joined with
    ``\\n``; comments (``:``) and other fields (``event``, ``id``, ``retry``) are skipped; an event is
    dispatched at its blank line, and one left open when the stream ends is dispatched too (some
    servers omit the last blank line).

    Example:
        >>> list(iter_sse_data([b'data: {"a": 1}\\n', b"\\n", b": ping\\n", b"data: [DONE]\\n", b"\\n"]))
        ['{"a": 1}', '[DONE]']
    """
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


# ----------------------------------------------------------------- HTTP
@dataclass
class _Response:
    """One request as the client saw it; times are ``clock()`` readings."""

    start: float
    end: float
    text: str = ""
    chunk_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None


class _Client:
    """A minimal OpenAI-protocol client over ``http.client``: one connection per request, every wait bounded."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float) -> None:
        if not isinstance(base_url, str) or not base_url.strip():
            raise ConfigError(f"`base_url` must be the server's URL, e.g. http://127.0.0.1:8000, got {base_url!r}")
        parsed = urllib.parse.urlsplit(base_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"`base_url` must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000, "
                f"got {base_url!r}"
            )
        try:
            port = parsed.port
        except ValueError:
            raise ConfigError(f"`base_url` {base_url!r} has an invalid port") from None
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = port or (443 if self.https else 80)
        prefix = parsed.path.rstrip("/")
        if not prefix.endswith("/v1"):
            prefix += "/v1"
        self.prefix = prefix
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{parsed.scheme}://{netloc}:{self.port}{prefix}"
        self.timeout_s = timeout_s
        self.headers = {"Accept": "text/event-stream, application/json", "Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    # -------------------------------------------------------------- requests
    def list_models(self) -> list[str] | None:
        """Ids from ``GET /v1/models``; None when the server has no such route (404/405)."""
        status, _, body = self._call("GET", "/models", None, read_body=True)
        if status in (404, 405):
            return None
        if status != 200:
            raise self._http_error("GET", "/models", status, body)
        data = self._json(body, "GET", "/models")
        entries = data.get("data") if isinstance(data, Mapping) else None
        if not isinstance(entries, list):
            raise MeasurementError(
                f"GET {self.url}/models did not answer an OpenAI model list ({{'data': [...]}}), got "
                f"{_excerpt(body)}; check that the URL points at an OpenAI-compatible server"
            )
        return [str(e["id"]) for e in entries if isinstance(e, Mapping) and "id" in e]

    def complete(self, path: str, body: Mapping[str, Any]) -> _Response:
        """One non-streamed request (for the server's own usage); untimed."""
        payload = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        start = time.perf_counter()
        status, _, raw = self._call("POST", path, payload, read_body=True)
        if status != 200:
            raise self._http_error("POST", path, status, raw)
        data = self._json(raw, "POST", path)
        choice = _first_choice(data, self.url + path)
        return _Response(
            start=start,
            end=time.perf_counter(),
            text=_choice_text(choice, streamed=False),
            finish_reason=choice.get("finish_reason"),
            usage=data.get("usage") if isinstance(data.get("usage"), dict) else None,
            model=data.get("model") if isinstance(data.get("model"), str) else None,
        )

    def stream(self, path: str, body: Mapping[str, Any], clock: Callable[[], float]) -> _Response:
        """One streamed request: the time of every event carrying text, the text, finish reason, usage."""
        payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
        deadline = time.monotonic() + self.timeout_s
        url = self.url + path
        conn = self._connection()
        start = clock()
        try:
            self._send(conn, "POST", path, payload)
            response = conn.getresponse()
            if response.status != 200:
                raise self._http_error("POST", path, response.status, response.read(4096))
            content_type = response.getheader("Content-Type", "") or ""
            result = _Response(start=start, end=start)
            events = 0
            for data in iter_sse_data(_lines(response, deadline, url, self.timeout_s)):
                now = clock()
                if data.strip() == "[DONE]":
                    break
                events += 1
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    raise MeasurementError(
                        f"{url} sent a stream event that is not JSON: {_excerpt(data)}; check that the "
                        "URL points at an OpenAI-compatible server"
                    ) from None
                if not isinstance(event, Mapping):
                    raise MeasurementError(f"{url} sent a stream event that is not an object: {_excerpt(data)}")
                if "error" in event:
                    raise MeasurementError(f"{url} reported an error in the stream: {_excerpt(event['error'])}")
                if isinstance(event.get("model"), str) and result.model is None:
                    result.model = event["model"]
                if isinstance(event.get("usage"), dict):
                    result.usage = event["usage"]
                choices = event.get("choices")
                if not isinstance(choices, list):
                    raise MeasurementError(
                        f"{url} sent a stream event without 'choices': {_excerpt(data)}; check that the URL "
                        "points at an OpenAI-compatible server and that `api` matches the route"
                    )
                if not choices:
                    continue  # the usage-only event at the end
                choice = choices[0]
                text = _choice_text(choice, streamed=True)
                if text:
                    result.text += text
                    result.chunk_times.append(now)
                if choice.get("finish_reason"):
                    result.finish_reason = str(choice["finish_reason"])
            result.end = clock()
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc, "POST", path) from exc
        finally:
            conn.close()
        if events == 0:
            raise MeasurementError(
                f"POST {url} with \"stream\": true answered no server-sent events (Content-Type "
                f"{content_type!r}); check that the server supports streaming as the OpenAI API does"
            )
        if result.finish_reason is None:
            # Every OpenAI-style stream ends its choice with a finish_reason; without one the server cut the
            # response short, and its timing and length would be a fiction.
            raise MeasurementError(
                f"POST {url}: the stream ended without a finish_reason after {len(result.chunk_times)} text "
                "events: the server cut the response short (llama-cpp-python's server does so to a stream "
                "when another request arrives, unless started with --interrupt_requests False); check the "
                "server's log, or measure with concurrency 1"
            )
        return result

    # -------------------------------------------------------------- plumbing
    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout_s)

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str, payload: Any) -> None:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        conn.request(method, self.prefix + path, body=data, headers=self.headers)

    def _call(self, method: str, path: str, payload: Any, *, read_body: bool) -> tuple[int, str, bytes]:
        conn = self._connection()
        try:
            self._send(conn, method, path, payload)
            response = conn.getresponse()
            body = response.read() if read_body else b""
            return response.status, response.getheader("Content-Type", "") or "", body
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc, method, path) from exc
        finally:
            conn.close()

    def _json(self, body: bytes, method: str, path: str) -> Any:
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MeasurementError(
                f"{method} {self.url}{path} did not answer JSON: {_excerpt(body)}; check that the URL points "
                "at an OpenAI-compatible server (vLLM, llama.cpp server, TGI, Ollama, ...)"
            ) from None

    def _http_error(self, method: str, path: str, status: int, body: bytes) -> MeasurementError:
        hint = {
            400: "check the request fields (`model`, `generation_kwargs`, `max_new_tokens` against the "
            "server's context)",
            401: "pass `api_key` (--api-key) for this server",
            403: "check `api_key` (--api-key) and its permissions",
            404: f"check the URL (the server's base, with or without /v1) and that it serves {path}; "
            "use `api='completions'` or `'chat'` to match the server",
            422: "check the request fields the server rejected",
        }.get(status, "check the server's log" if status >= 500 else "check the URL and the server")
        return MeasurementError(f"{method} {self.url}{path} answered HTTP {status}: {_excerpt(body)}; {hint}")

    def _transport_error(self, exc: BaseException, method: str, path: str) -> MeasurementError:
        where = f"{method} {self.url}{path}"
        if isinstance(exc, MeasurementError):
            return exc
        if isinstance(exc, ConnectionRefusedError):
            return MeasurementError(
                f"cannot connect to {self.url}: connection refused; is the server running and listening on "
                f"{self.host}:{self.port}?"
            )
        if isinstance(exc, socket.gaierror):
            return MeasurementError(f"cannot resolve the host of {self.url} ({exc}); check the URL")
        if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
            return MeasurementError(
                f"{where}: no answer within timeout_s={self.timeout_s:g} s; is the server overloaded or still "
                "loading the model? raise `timeout_s` (--timeout) if requests are legitimately slow"
            )
        if isinstance(exc, http.client.HTTPException):
            return MeasurementError(
                f"{where}: the server did not answer HTTP properly ({type(exc).__name__}: {exc}); check the "
                "URL's scheme (http vs https) and port"
            )
        return MeasurementError(f"{where} failed: {type(exc).__name__}: {exc}; check the URL and the server")


def _lines(response: http.client.HTTPResponse, deadline: float, url: str, timeout_s: float) -> Iterator[bytes]:
    """The response's lines until EOF; each read is bounded by the socket timeout, the whole by ``deadline``."""
    while True:
        line = response.readline(1 << 20)
        if not line:
            return
        yield line
        if time.monotonic() > deadline:
            raise MeasurementError(
                f"POST {url}: the response took longer than timeout_s={timeout_s:g} s; raise `timeout_s` "
                "(--timeout) or lower `max_new_tokens`"
            )


def _first_choice(data: Any, url: str) -> Mapping[str, Any]:
    choices = data.get("choices") if isinstance(data, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise MeasurementError(
            f"{url} answered without 'choices': {_excerpt(data)}; check that the URL points at an "
            "OpenAI-compatible server"
        )
    return choices[0]


def _choice_text(choice: Any, *, streamed: bool) -> str:
    """Text of a choice: ``delta.content`` (chat stream), ``message.content`` (chat) or ``text`` (completions).

    Reasoning text (``reasoning_content``, sent by reasoning models) is output too: it costs tokens and time.
    """
    if not isinstance(choice, Mapping):
        return ""
    if isinstance(choice.get("text"), str):
        return str(choice["text"])
    part = choice.get("delta" if streamed else "message")
    if not isinstance(part, Mapping):
        return ""
    return "".join(str(part.get(k) or "") for k in ("reasoning_content", "content"))


def _request_body(body: Mapping[str, Any], prompt: str, chat: bool) -> dict[str, Any]:
    if chat:
        return {**body, "messages": [{"role": "user", "content": prompt}]}
    return {**body, "prompt": prompt}


def _choose_model(client: _Client, model: str | None, listed: list[str] | None) -> str:
    if model is not None:
        if listed and model not in listed:
            logger.warning(
                "%s does not list the model %r (it lists %s); sending it anyway", client.url, model, listed[:5]
            )
        return model
    if not listed:
        raise ConfigError(
            f"{client.url} lists no model at /v1/models; pass the served model name as `model` (--served-model)"
        )
    return listed[0]


# ----------------------------------------------------------------- token counts
class _TokenCounter:
    """Turns responses into samples: one source of truth per count, every other source checked against it."""

    def __init__(self, tokenizer: Any, prompts: list[str], chat: bool, checks: Mapping[int, _Response]) -> None:
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.chat = chat
        self.checks = checks
        self.output_sources: dict[str, int] = {}
        self.input_sources: dict[str, int] = {}
        self.compared = 0
        self.disagreements: list[dict[str, Any]] = []
        self.one_token_per_chunk = True
        self.check_text_mismatches = 0
        self._input_ids: dict[int, int] = {}

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_tokens(self, index: int) -> int:
        if index not in self._input_ids:
            self._input_ids[index] = len(
                encode_prompts(self.tokenizer, [self.prompts[index]], apply_chat_template=self.chat)[0]
            )
        return self._input_ids[index]

    def sample(self, repeat: int, index: int, response: _Response, max_new_tokens: int) -> RequestSample:
        usage = response.usage or {}
        check = self.checks.get(index)
        check_usage = (check.usage or {}) if check is not None else {}
        outputs: dict[str, int] = {}
        if isinstance(usage.get("completion_tokens"), int):
            outputs["usage"] = usage["completion_tokens"]
        if self.tokenizer is not None:
            outputs["tokenizer"] = self._tokens(response.text)
        if check is not None and isinstance(check_usage.get("completion_tokens"), int):
            if check.text == response.text:
                outputs["usage_nonstreamed"] = check_usage["completion_tokens"]
            else:
                self.check_text_mismatches += 1
        source = next((s for s in ("usage", "tokenizer", "usage_nonstreamed") if s in outputs), "chunks")
        n_out = outputs.get(source, len(response.chunk_times))
        self.output_sources[source] = self.output_sources.get(source, 0) + 1
        if len(outputs) > 1:
            self.compared += 1
            if len(set(outputs.values())) > 1:
                self.disagreements.append({"prompt_index": index, "repeat": repeat, **outputs})
        if len(response.chunk_times) != n_out:
            self.one_token_per_chunk = False

        if isinstance(usage.get("prompt_tokens"), int):
            n_in, in_source = usage["prompt_tokens"], "usage"
        elif isinstance(check_usage.get("prompt_tokens"), int):
            n_in, in_source = check_usage["prompt_tokens"], "usage_nonstreamed"
        elif self.tokenizer is not None:
            n_in, in_source = self._prompt_tokens(index), "tokenizer"
        else:
            n_in, in_source = 0, "unknown"
        self.input_sources[in_source] = self.input_sources.get(in_source, 0) + 1

        reason = response.finish_reason
        finished = reason != "length" if reason else n_out < max_new_tokens
        times = tuple(t - response.start for t in response.chunk_times)
        end = response.end - response.start
        # No text at all (an immediate stop): the first token is the end of the response.
        ttft = times[0] if times else end
        return RequestSample(index, repeat, end, ttft, n_in, n_out, finished, token_times_s=times)

    @property
    def output_source(self) -> str:
        """Where output counts came from: usage, tokenizer, usage_nonstreamed or chunks; "mixed" when several."""
        return _one_source(self.output_sources)

    def report(self) -> dict[str, Any]:
        if self.disagreements:
            logger.warning(
                "token counts disagree in %d of %d requests (first: %s); outputs are counted by %s",
                len(self.disagreements),
                self.compared,
                self.disagreements[0],
                self.output_source,
            )
        return {
            "output_source": self.output_source,
            "input_source": _one_source(self.input_sources),
            "output_sources": dict(self.output_sources),
            "compared": self.compared,
            "disagreements": len(self.disagreements),
            "disagreement_examples": self.disagreements[:_MAX_EXAMPLES],
            "one_token_per_chunk": self.one_token_per_chunk,
            "nonstreamed_text_mismatches": self.check_text_mismatches,
        }


# ----------------------------------------------------------------- helpers
def _decoding(body: Mapping[str, Any]) -> dict[str, Any]:
    """The decoding the requests ask for, in the shape :class:`~ftcallback._execution.Decoding` records."""
    if not body.get("temperature"):
        return {"mode": "greedy", "parameters": {}, "ignored": {}}
    params = {k: body[k] for k in _SAMPLING_FIELDS if k in body}
    return {"mode": "sampling", "parameters": _json_safe(params), "ignored": {}}


def _one_source(counts: Mapping[str, int]) -> str:
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed" if counts else "none"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ConfigError(f"`{name}` must be >= {minimum}, got {value}")


def _check_generation_kwargs(generation_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if generation_kwargs is None:
        return {}
    if not isinstance(generation_kwargs, Mapping):
        raise ConfigError(
            f"`generation_kwargs` must be a dict of request fields or None, got {type(generation_kwargs).__name__}"
        )
    for key in generation_kwargs:
        if key in _OWNED_FIELDS:
            raise ConfigError(f"`generation_kwargs` must not set {key!r}: {_OWNED_FIELDS[key]}")
    try:
        json.dumps(dict(generation_kwargs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`generation_kwargs` must be JSON-serialisable request fields: {exc}") from None
    return dict(generation_kwargs)


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    # Checked serialisable above; a round trip gives plain lists and dicts, as a saved file reads back.
    result: dict[str, Any] = json.loads(json.dumps(value))
    return result


def _excerpt(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        try:
            value = json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
    text = " ".join(value.split())
    if not text:
        return "(empty body)"
    return repr(text if len(text) <= _MAX_ERROR_BODY else text[:_MAX_ERROR_BODY] + "...")


def _version() -> str:
    from . import __version__

    return __version__
