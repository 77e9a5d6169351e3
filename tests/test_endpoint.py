"""measure_endpoint: SSE parsing and error paths against a tiny replaying server; the protocol against a real one.

The fast tests run a stdlib ``http.server`` on 127.0.0.1 that replays scripted OpenAI stream chunks: enough
for parsing, bookkeeping, concurrency and timeouts. The slow tests start llama.cpp's OpenAI-compatible
server (``llama_cpp.server`` from ``llama-cpp-python[server]``) on the embedded SmolLM2 GGUF: they prove the
protocol against a server nobody here wrote.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ftcallback._budget import Budget
from ftcallback._endpoint import BACKEND, iter_sse_data, measure_endpoint
from ftcallback._errors import ConfigError, MeasurementError
from ftcallback._measurement import Measurement
from ftcallback._prompts import prompts_sha256

PROMPTS = ["What is 2 + 2?", "Name a colour."]


# ----------------------------------------------------------------- SSE parsing
@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"data: a\n", b"\n", b"data: b\n", b"\n"], ["a", "b"]),
        ([b"data: a\r\n", b"\r\n"], ["a"]),  # CRLF
        ([b"data: one\n", b"data: two\n", b"\n"], ["one\ntwo"]),  # multi-line data joined with \n
        ([b": keep-alive\n", b"event: message\n", b"id: 7\n", b"data:x\n", b"\n"], ["x"]),  # no space after ':'
        ([b"data: last\n"], ["last"]),  # no final blank line: still dispatched
        ([b"\n", b"\n", b"retry: 10\n", b"\n"], []),  # blank events and other fields yield nothing
        (["data: str lines\n", "\n"], ["str lines"]),
    ],
)
def test_iter_sse_data(lines: list[Any], expected: list[str]) -> None:
    assert list(iter_sse_data(lines)) == expected


# ----------------------------------------------------------------- a replaying server
@dataclass
class Script:
    """What the fake server answers; every field can be changed by a test."""

    tokens: list[str] = field(default_factory=lambda: ["Four", ".", " Done"])
    finish_reason: str = "stop"
    stream_usage: bool = False  # usage in the stream (most servers: only when include_usage is honoured)
    usage_completion_tokens: int | None = None  # default: len(tokens)
    models: Any = field(default_factory=lambda: {"object": "list", "data": [{"id": "fake-model"}]})
    models_status: int = 200
    completion_status: int = 200
    raw_stream: list[bytes] | None = None  # replayed as is instead of the scripted events
    stall_s: float = 0.0  # sleep before the first event
    barrier: threading.Barrier | None = None  # requests wait here: proves they are in flight together
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _chunk(script: Script, chat: bool, text: str | None, finish: str | None) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if text is None and finish is None:
            delta = {"role": "assistant"}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    return {"id": "x", "model": "fake-model", "choices": [choice]}


def _usage(script: Script) -> dict[str, int]:
    n = script.usage_completion_tokens if script.usage_completion_tokens is not None else len(script.tokens)
    return {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}


class _Handler(http.server.BaseHTTPRequestHandler):
    script: Script
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, data: Any) -> None:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        script = self.script
        if self.path != "/v1/models":
            self._json(404, {"error": "no route"})
        elif isinstance(script.models, bytes):
            self._json(script.models_status, script.models)
        else:
            self._json(script.models_status, script.models)

    def do_POST(self) -> None:
        script = self.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with script.lock:
            script.bodies.append(body)
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": {"message": "not found"}})
            return
        if script.completion_status != 200:
            self._json(script.completion_status, {"error": {"message": "model 'x' not found"}})
            return
        if not body.get("stream"):
            text = "".join(script.tokens)
            choice = {"index": 0, "finish_reason": script.finish_reason}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            self._json(200, {"model": "fake-model", "choices": [choice], "usage": _usage(script)})
            return
        with script.lock:
            script.in_flight += 1
            script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            if script.barrier is not None:
                script.barrier.wait()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            time.sleep(script.stall_s)
            if script.raw_stream is not None:
                events = script.raw_stream
            else:
                chunks = [_chunk(script, chat, None, None)] if chat else []
                chunks += [_chunk(script, chat, t, None) for t in script.tokens]
                chunks.append(_chunk(script, chat, None, script.finish_reason))
                if script.stream_usage:
                    chunks.append({"id": "x", "model": "fake-model", "choices": [], "usage": _usage(script)})
                events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
            for event in events:
                self.wfile.write(event)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with script.lock:
                script.in_flight -= 1
        self.close_connection = True


@contextlib.contextmanager
def _serve(script: Script) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"script": script})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def url(script: Script) -> Iterator[str]:
    with _serve(script) as base:
        yield base


# ----------------------------------------------------------------- behaviour against the replaying server
def test_chat_stream_is_timed_counted_and_recorded(url: str, script: Script) -> None:
    m = measure_endpoint(url, PROMPTS, max_new_tokens=8, warmup=1, repeats=2)
    assert len(m.samples) == len(PROMPTS) * 2
    for s in m.samples:
        assert 0 <= s.ttft_s <= s.latency_s
        assert len(s.token_times_s) == len(script.tokens)  # the role-only first event carries no token
        assert s.token_times_s[0] == s.ttft_s
        assert list(s.token_times_s) == sorted(s.token_times_s)
        assert s.output_tokens == 3 and s.input_tokens == 11 and s.finished
    assert m.environment["backend"] == BACKEND
    assert m.environment["api"] == "chat" and m.environment["concurrency"] == 1
    assert m.environment["server_model"] == "fake-model"
    assert m.environment["url"] == url + "/v1"
    counts = m.environment["token_counts"]
    assert counts["output_source"] == "usage_nonstreamed" and counts["disagreements"] == 0
    assert counts["one_token_per_chunk"] is True
    assert m.decoding["mode"] == "greedy"
    assert m.settings["apply_chat_template"] is True
    assert m.settings["prompts_sha256"] == prompts_sha256(PROMPTS, True)
    assert m.sample_outputs[0]["output"] == "Four. Done"
    streamed = [b for b in script.bodies if b.get("stream")]
    assert len(streamed) == 1 + 2 * len(PROMPTS)  # warm-up + timed
    assert len(script.bodies) - len(streamed) == len(PROMPTS)  # one untimed usage check per prompt
    body = streamed[0]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 8 and body["model"] == "fake-model"
    assert body["messages"] == [{"role": "user", "content": PROMPTS[0]}]
    assert body["stream_options"] == {"include_usage": True}


def test_completions_with_stream_usage_and_the_tokenizer_check(url: str, script: Script, tokenizer: Any) -> None:
    script.stream_usage = True
    script.tokens = ["the", " model", " returns"]
    script.finish_reason = "length"
    m = measure_endpoint(url, PROMPTS, api="completions", max_new_tokens=3, warmup=0, repeats=1, tokenizer=tokenizer)
    assert all(not b.get("messages") and b["prompt"] in PROMPTS for b in script.bodies)
    assert all(b.get("stream") for b in script.bodies)  # usage came with the stream: no check requests
    counts = m.environment["token_counts"]
    assert counts["output_source"] == "usage" and counts["input_source"] == "usage"
    expected = len(tokenizer("the model returns", add_special_tokens=False)["input_ids"])
    assert counts["compared"] == len(PROMPTS)
    assert counts["disagreements"] == (0 if expected == 3 else len(PROMPTS))
    assert all(not s.finished and s.truncated for s in m.samples)
    assert m.settings["apply_chat_template"] is False


def test_disagreeing_counts_are_recorded_and_logged(url: str, script: Script, caplog: pytest.LogCaptureFixture) -> None:
    script.stream_usage = True
    script.usage_completion_tokens = 5  # the server says 5, the stream carried 3 chunks
    with caplog.at_level("WARNING", logger="ftcallback.endpoint"):
        m = measure_endpoint(url, PROMPTS[:1], warmup=0, repeats=1, usage_check=False)
    assert m.samples[0].output_tokens == 5  # the server's usage is the count
    assert m.environment["token_counts"]["one_token_per_chunk"] is False
    assert "token counts" not in caplog.text  # chunks are not tokens: no disagreement without a second count


def test_concurrency_keeps_requests_in_flight_and_slo_attainment_uses_the_budget(url: str, script: Script) -> None:
    script.barrier = threading.Barrier(2, timeout=10)  # a request returns only when a second one is in flight
    m = measure_endpoint(url, PROMPTS, warmup=0, repeats=2, concurrency=2, timeout_s=20)
    assert script.max_in_flight == 2
    assert m.environment["concurrency"] == 2
    assert [(s.repeat, s.prompt_index) for s in m.samples] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    slowest = max(s.latency_s for s in m.samples) * 1000
    assert Budget(latency_ms=slowest * 2).slo_attainment_of(m) == 1.0
    fastest = min(s.latency_s for s in m.samples) * 1000
    assert Budget(latency_ms=fastest / 2).slo_attainment_of(m) == 0.0
    assert Budget(max_token_increase=0.1).slo_attainment_of(m) is None


def test_json_round_trip_keeps_token_times(url: str, tmp_path: Path) -> None:
    m = measure_endpoint(url, PROMPTS, warmup=0, repeats=1)
    back = Measurement.load(m.save(tmp_path / "m.json"))
    assert back.samples == m.samples
    assert back.environment == json.loads(json.dumps(dict(m.environment)))
    assert back.summary()["itl_ms_p50"] == pytest.approx(m.summary()["itl_ms_p50"])


def test_generation_kwargs_override_the_greedy_default(url: str, script: Script) -> None:
    m = measure_endpoint(url, PROMPTS[:1], warmup=0, repeats=1, generation_kwargs={"temperature": 0.7, "seed": 3})
    assert script.bodies[0]["temperature"] == 0.7 and script.bodies[0]["seed"] == 3
    assert m.settings["generation_kwargs"] == {"temperature": 0.7, "seed": 3}
    assert m.decoding == {"mode": "sampling", "parameters": {"temperature": 0.7, "seed": 3}, "ignored": {}}


# ----------------------------------------------------------------- errors
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_names_url_and_what_to_check() -> None:
    port = _free_port()
    with pytest.raises(MeasurementError, match=rf"cannot connect to http://127.0.0.1:{port}/v1: connection refused"):
        measure_endpoint(f"http://127.0.0.1:{port}", PROMPTS, timeout_s=5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"completion_status": 404}, r"/v1/chat/completions answered HTTP 404: .*check the URL"),
        ({"completion_status": 401}, r"answered HTTP 401.*api_key"),
        ({"completion_status": 500}, r"answered HTTP 500.*server's log"),
        ({"models_status": 500}, r"GET http://127.0.0.1:\d+/v1/models answered HTTP 500"),
        ({"models": b"<html>hello</html>"}, r"/v1/models did not answer JSON: '<html>hello</html>'"),
        ({"models": {"models": []}}, r"did not answer an OpenAI model list"),
        ({"models": {"data": []}}, r"lists no model at /v1/models; pass the served model name"),
        ({"raw_stream": [b"data: not json\n\n"]}, r"sent a stream event that is not JSON: 'not json'"),
        ({"raw_stream": [b'data: {"error": {"message": "boom"}}\n\n']}, r"reported an error in the stream.*boom"),
        ({"raw_stream": [b'data: {"id": 1}\n\n']}, r"without 'choices'"),
        ({"raw_stream": [b"hello\n"]}, r"answered no server-sent events"),
        (
            {"raw_stream": [b'data: {"choices": [{"index": 0, "text": "a", "finish_reason": null}]}\n\n']},
            r"stream ended without a finish_reason after 1 text events: the server cut the response short",
        ),
    ],
)
def test_server_errors_are_clear(url: str, script: Script, change: dict[str, Any], match: str) -> None:
    for key, value in change.items():
        setattr(script, key, value)
    error = ConfigError if "lists no model" in match else MeasurementError
    with pytest.raises(error, match=match):
        measure_endpoint(url, PROMPTS, warmup=0, repeats=1, timeout_s=5)


def test_a_stalled_server_times_out(url: str, script: Script) -> None:
    script.stall_s = 3.0
    start = time.monotonic()
    with pytest.raises(MeasurementError, match=r"no answer within timeout_s=0.3 s"):
        measure_endpoint(url, PROMPTS[:1], warmup=0, repeats=1, timeout_s=0.3)
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "127.0.0.1:8000"}, r"`base_url` must be an http:// or https:// URL"),
        ({"base_url": ""}, r"`base_url` must be the server's URL"),
        ({"api": "responses"}, r"`api` must be 'chat' or 'completions'"),
        ({"concurrency": 0}, r"`concurrency` must be >= 1, got 0"),
        ({"max_new_tokens": True}, r"`max_new_tokens` must be an int"),
        ({"timeout_s": 0}, r"`timeout_s` must be a number > 0"),
        ({"generation_kwargs": {"stream": False}}, r"must not set 'stream'"),
        ({"generation_kwargs": {"max_tokens": 3}}, r"must not set 'max_tokens': use the `max_new_tokens`"),
        ({"generation_kwargs": {"x": object()}}, r"JSON-serialisable"),
        ({"model": ""}, r"`model` must be a non-empty string"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    call: dict[str, Any] = {"base_url": "http://127.0.0.1:9", "prompts": PROMPTS, **kwargs}
    with pytest.raises(ConfigError, match=match):
        measure_endpoint(**call)


def test_base_url_forms(url: str) -> None:
    for form in (url, url + "/", url + "/v1", url + "/v1/"):
        m = measure_endpoint(form, PROMPTS[:1], warmup=0, repeats=1, usage_check=False)
        assert m.environment["url"] == url + "/v1"
        assert m.environment["token_counts"]["output_source"] == "chunks"


def test_goodput_is_nan_free_on_empty_and_none_without_limit() -> None:
    assert math.isnan(Measurement(samples=()).slo_attainment(latency_ms=1.0))
    assert Budget().slo_attainment_of(Measurement(samples=())) is None


# ----------------------------------------------------------------- a real server: llama.cpp
@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on the embedded SmolLM2 GGUF, on a free 127.0.0.1 port."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server] (scripts/bootstrap.sh installs it)")
    from ftcallback.testing import embedded_model_path

    folder, name = embedded_model_path()
    port = _free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(folder / name),
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "1024",
        # By default it cuts a stream short when another request arrives: concurrency needs queueing instead.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    log = open(os.devnull, "wb")  # noqa: SIM115 - closed in the finaliser
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with code {proc.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not serve /v1/models within 120 s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from ftcallback.testing import embedded_model_path

    folder, name = embedded_model_path()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


REAL_PROMPTS = ["What is the capital of France?", "Name three colours."]
# Raw text for /v1/completions: an instruct model given a bare question often ends at once.
RAW_PROMPTS = ["The capital of France is", "Three primary colours are"]


@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_real_server_counts_agree_and_ttft_precedes_e2e(
    llama_server: str, smollm2_tokenizer: Any, api: str, tmp_path: Path
) -> None:
    prompts = REAL_PROMPTS if api == "chat" else RAW_PROMPTS
    m = measure_endpoint(
        llama_server, prompts, api=api, max_new_tokens=12, warmup=1, repeats=2, tokenizer=smollm2_tokenizer
    )
    counts = m.environment["token_counts"]
    # llama-cpp-python 0.3.36 sends no usage in a stream: the tokenizer counts and the server's own usage
    # (one non-streamed request per prompt) checks it.
    assert counts["output_source"] in ("usage", "tokenizer")
    assert counts["compared"] == len(m.samples)
    assert counts["disagreements"] == 0, counts["disagreement_examples"]
    assert counts["nonstreamed_text_mismatches"] == 0
    for s in m.samples:
        assert 0 < s.ttft_s <= s.latency_s
        assert 1 <= s.output_tokens <= 12
        assert s.input_tokens > 0
        if counts["one_token_per_chunk"]:
            assert len(s.inter_token_s) == s.output_tokens - 1
    assert m.environment["server_model"]
    back = Measurement.load(m.save(tmp_path / f"{api}.json"))
    assert back.samples == m.samples


@pytest.mark.slow
def test_real_server_under_concurrency(llama_server: str) -> None:
    m = measure_endpoint(llama_server, REAL_PROMPTS, max_new_tokens=8, warmup=0, repeats=1, concurrency=2)
    assert m.environment["concurrency"] == 2 and len(m.samples) == 2
    assert all(0 < s.ttft_s <= s.latency_s and s.output_tokens >= 1 for s in m.samples)
    assert m.environment["token_counts"]["nonstreamed_text_mismatches"] == 0
    goodput = Budget(latency_ms=60_000).slo_attainment_of(m)
    assert goodput == 1.0


# ----------------------------------------------------------------- the command line
def test_cli_measure_endpoint_writes_a_file_compare_accepts(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ftcallback.cli import main

    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "served.json"
    argv = ["measure", "--endpoint", url, "--prompts", str(probe), "--repeats", "2", "--warmup", "0"]
    assert main([*argv, "--concurrency", "2", "--latency-ms", "60000", "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "goodput: 100% of requests within every per-request limit at concurrency 2" in printed
    m = Measurement.load(out)
    assert m.environment["backend"] == BACKEND and m.environment["concurrency"] == 2
    assert len(m.samples) == 2 * len(PROMPTS)
    assert main(["compare", str(out), str(out), "--max-latency-increase", "0.5", "-q"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["measure", "--prompts", "{probe}"], "MODEL is required, unless --endpoint URL"),
        (["measure", "smollm2", "--prompts", "{probe}", "--concurrency", "2"], "--concurrency needs --endpoint"),
        (["measure", "--endpoint", "{url}", "--prompts", "{probe}", "--batch-size", "2"], "use --concurrency"),
        (["measure", "--endpoint", "{url}", "--prompts", "{probe}", "--chat"], "--chat does not apply"),
        (["measure", "--endpoint", "{url}", "--prompts", "{probe}", "--timeout", "0"], "--timeout must be > 0"),
        (["measure", "--endpoint", "http://127.0.0.1:{port}", "--prompts", "{probe}"], "connection refused"),
    ],
)
def test_cli_endpoint_usage_errors(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from ftcallback.cli import main

    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(PROMPTS) + "\n")
    values = {"probe": str(probe), "url": url, "port": str(_free_port())}
    assert main([*(a.format(**values) for a in argv), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ftcallback: error: ") and message in err[0], err


@pytest.mark.slow
def test_real_server_through_the_cli(llama_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ftcallback.cli import main

    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(REAL_PROMPTS) + "\n")
    out = tmp_path / "served.json"
    argv = ["measure", "smollm2", "--endpoint", llama_server, "--prompts", str(probe), "--max-new-tokens", "8"]
    assert main([*argv, "--repeats", "1", "--warmup", "0", "--json", str(out), "-q"]) == 0
    m = Measurement.load(out)
    assert m.environment["backend"] == BACKEND and m.environment["token_counts"]["disagreements"] == 0
    assert m.environment["token_counts"]["output_source"] == "tokenizer"
    assert main(["compare", str(out), str(out), "--max-token-increase", "0.2", "-q"]) == 0
    assert "ship" in capsys.readouterr().out.lower()
