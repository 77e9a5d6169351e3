"""Probe prompts: loading from every source, the errors, fingerprints, tokenizer resolution and encoding."""

from __future__ import annotations

import json

import pytest

from ftcallback._errors import ConfigError, ModelError, PromptError
from ftcallback._prompts import encode_prompts, load_prompts, prompts_sha256, resolve_tokenizer
from ftcallback.testing import tiny_tokenizer

# ----------------------------------------------------------------- load_prompts: sources


@pytest.mark.parametrize("container", [list, tuple])
def test_load_from_sequence_returns_a_new_list(container):
    source = container(["a question", "another one"])
    prompts = load_prompts(source)
    assert prompts == ["a question", "another one"]
    assert isinstance(prompts, list) and prompts is not source


@pytest.mark.parametrize("column", ["prompt", "text"])
def test_load_from_dataset_column(column):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({column: ["one", "two"], "other": ["x", "y"]})
    assert load_prompts(ds) == ["one", "two"]


def test_dataset_prefers_prompt_over_text():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["t"], "prompt": ["p"]})
    assert load_prompts(ds) == ["p"]


def test_dataset_without_usable_column_lists_its_columns():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    with pytest.raises(PromptError, match=r"`prompts`.*no 'prompt' or 'text' column.*'question'.*'answer'"):
        load_prompts(ds)


def test_dataset_dict_asks_for_a_split():
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["p"]})})
    with pytest.raises(PromptError, match=r"DatasetDict.*prompts=dataset\['train'\]"):
        load_prompts(dd)


def test_load_txt_skips_blank_lines(tmp_path):
    path = tmp_path / "probe.txt"
    path.write_text("first prompt\n\n   \nsecond prompt\n", encoding="utf-8")
    assert load_prompts(path) == ["first prompt", "second prompt"]
    assert load_prompts(str(path)) == ["first prompt", "second prompt"]


def test_load_jsonl_objects_and_bare_strings(tmp_path):
    path = tmp_path / "probe.jsonl"
    lines = [json.dumps({"prompt": "p1", "id": 1}), "", json.dumps({"text": "t2"}), json.dumps("bare")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_prompts(path) == ["p1", "t2", "bare"]


# ----------------------------------------------------------------- load_prompts: errors


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ([], r"`prompts` must contain at least one prompt"),
        (["ok", 3], r"`prompts\[1\]` must be a str, got int"),
        (["ok", None], r"`prompts\[1\]` must be a str, got NoneType"),
        (["ok", "  \n"], r"`prompts\[1\]` is empty or whitespace-only"),
        ([""], r"`prompts\[0\]` is empty"),
        (42, r"`prompts` must be a list of strings.*got int"),
    ],
)
def test_invalid_prompts_name_the_argument_and_index(source, pattern):
    with pytest.raises(PromptError, match=pattern):
        load_prompts(source)


def test_prompt_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_prompts([])


def test_missing_file(tmp_path):
    with pytest.raises(PromptError, match=r"`prompts` file .*missing\.txt' does not exist"):
        load_prompts(tmp_path / "missing.txt")


def test_a_literal_string_is_read_as_a_path_and_the_error_says_so():
    with pytest.raises(PromptError, match=r"does not exist.*list of strings for literal prompts"):
        load_prompts("What is the capital of France?")


def test_unknown_extension(tmp_path):
    path = tmp_path / "probe.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"unsupported extension '\.csv'.*\.txt.*\.jsonl"):
        load_prompts(path)


def test_unreadable_file(tmp_path):
    (tmp_path / "folder.txt").mkdir()  # a directory cannot be read as text, even by root
    with pytest.raises(PromptError, match=r"`prompts` file .*folder\.txt' cannot be read"):
        load_prompts(tmp_path / "folder.txt")


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptError, match=r"cannot be read.*UTF-8"):
        load_prompts(path)


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(PromptError, match=r"line 3 is not valid JSON"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [('{"question": "q"}', r"line 1 has no 'prompt' or 'text' field.*question"), ("42", r"line 1.*got int")],
)
def test_jsonl_line_without_a_prompt(tmp_path, line, pattern):
    path = tmp_path / "probe.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(PromptError, match=pattern):
        load_prompts(path)


def test_empty_file_is_an_empty_probe(tmp_path):
    path = tmp_path / "probe.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"at least one prompt"):
        load_prompts(path)


# ----------------------------------------------------------------- prompts_sha256


def test_sha256_is_stable_and_sensitive_to_content_order_and_template():
    base = prompts_sha256(["a", "b"], apply_chat_template=False)
    assert base == prompts_sha256(("a", "b"), apply_chat_template=False)
    assert len(base) == 64 and int(base, 16) >= 0
    assert base != prompts_sha256(["b", "a"], apply_chat_template=False)
    assert base != prompts_sha256(["a", "b "], apply_chat_template=False)
    assert base != prompts_sha256(["a", "b"], apply_chat_template=True)
    # Joining must not make two different probes collide.
    assert prompts_sha256(["ab"], False) != prompts_sha256(["a", "b"], False)


# ----------------------------------------------------------------- resolve_tokenizer


class _Processor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def test_resolve_tokenizer_returns_a_tokenizer_as_is_and_unwraps_a_processor(tokenizer):
    assert resolve_tokenizer(tokenizer) is tokenizer
    assert resolve_tokenizer(_Processor(tokenizer)) is tokenizer


@pytest.mark.parametrize("thing", [None, object(), _Processor(None)])
def test_resolve_tokenizer_rejects_non_tokenizers_with_the_fix(thing):
    with pytest.raises(
        ModelError, match=r"tokenizer=\.\.\. to EfficiencyCallback or processing_class=\.\.\. to Trainer"
    ):
        resolve_tokenizer(thing)


# ----------------------------------------------------------------- encode_prompts


def _tokenizer_state(tok):
    return (
        tok.padding_side,
        tok.truncation_side,
        tok.pad_token,
        tok.eos_token,
        tok.model_max_length,
        len(tok),
    )


def test_encode_one_by_one_without_padding(tokenizer):
    prompts = ["a user", "the model returns a short reply."]
    before = _tokenizer_state(tokenizer)
    ids = encode_prompts(tokenizer, prompts)
    assert ids == [tokenizer(p)["input_ids"] for p in prompts]
    assert len(ids[0]) < len(ids[1])  # no padding to a common length
    assert tokenizer.pad_token_id not in ids[0]
    assert all(isinstance(t, int) for row in ids for t in row)
    assert _tokenizer_state(tokenizer) == before


def test_encode_with_chat_template():
    tok = tiny_tokenizer(chat_template=True)
    ids = encode_prompts(tok, ["hello there"], apply_chat_template=True)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hello there"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<s>assistant:")
    assert ids == [tok(text, add_special_tokens=False)["input_ids"]]
    assert ids != encode_prompts(tok, ["hello there"])


def test_chat_template_missing_is_a_config_error(tokenizer):
    with pytest.raises(
        ConfigError, match=r"`apply_chat_template` is True but the tokenizer .* no chat template"
    ):
        encode_prompts(tokenizer, ["hi"], apply_chat_template=True)
