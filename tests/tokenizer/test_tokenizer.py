"""The real SmolLM2 tokenizer: ids, special tokens, EOS ids, and chat templates in the sandbox."""

from __future__ import annotations

import json
import shutil

import jinja2
import pytest

from radixserve.tokenizer import ChatTemplateError, Tokenizer, load_chat_template

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END, ENDOFTEXT = 1, 2, 0


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return Tokenizer(default_model_dir)


def _copy_tokenizer(src, dst, drop_template=False):
    dst.mkdir(exist_ok=True)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text())
    if drop_template:
        config.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def test_special_tokens_and_eos_ids(tokenizer):
    # The GGUF's BOS is <|im_start|>: the ChatML turn opener doubles as BOS, and plain encoding never adds it.
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.bos_token_id == IM_START
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_ids == (IM_END,)
    assert tokenizer.vocab_size == 49152
    assert {ENDOFTEXT, IM_START, IM_END} <= tokenizer.special_ids
    assert tokenizer.encode("Hello world") == tokenizer.encode("Hello world", add_special_tokens=False)


def test_encode_decode_match_transformers(tokenizer):
    for text in ["Hello world", " two  spaces\n\nand lines", "café 中文 😀", "<|im_start|>user\nhi<|im_end|>"]:
        ids = tokenizer.encode(text)
        assert ids == tokenizer.hf.encode(text)
        assert tokenizer.decode(ids) == text == tokenizer.hf.decode(ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == tokenizer.hf.decode(ids, skip_special_tokens=True)


def test_special_token_strings_in_text_become_their_ids(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == IM_START and ids[-1] == IM_END
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_spaces_between_special_tokens_join_pieces_with_one_space(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|><|endoftext|>")
    assert tokenizer.decode(ids, spaces_between_special_tokens=True) == "<|im_start|> user\nhi <|im_end|> <|endoftext|>"
    assert tokenizer.decode(ids, skip_special_tokens=True, spaces_between_special_tokens=True) == "user\nhi"


def test_chat_template_renders_chatml_exactly(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a color."},
    ]
    assert tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nName a color.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    for add_generation_prompt in (True, False):
        assert tokenizer.apply_chat_template(messages, add_generation_prompt) == tokenizer.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def test_template_adds_its_default_system_prompt(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert text == f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_content_parts_are_concatenated(tokenizer):
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    as_parts = tokenizer.apply_chat_template([{"role": "user", "content": parts}])
    assert as_parts == tokenizer.apply_chat_template([{"role": "user", "content": "Hello, world"}])


def test_non_text_part_is_a_clear_error(tokenizer):
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "x.png"}}]
    with pytest.raises(ValueError, match="unsupported content part 'image_url'"):
        tokenizer.apply_chat_template([{"role": "user", "content": parts}])


def test_none_content_renders_empty(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "system", "content": None}], add_generation_prompt=False)
    assert text == "<|im_start|>system\n<|im_end|>\n"


def test_custom_template_from_a_file(tokenizer, default_model_dir, tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}\n{% endfor %}{{ eos_token }}\n")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    expected = "[USER] hi\n[ASSISTANT] yo\n<|im_end|>"
    assert tokenizer.apply_chat_template(messages, chat_template=load_chat_template(str(path))) == expected
    assert Tokenizer(default_model_dir, chat_template=str(path)).apply_chat_template(messages) == expected
    json_path = tmp_path / "template.json"
    json_path.write_text(json.dumps({"chat_template": path.read_text()}))
    assert load_chat_template(str(json_path)) == path.read_text()


def test_template_text_is_accepted_and_a_missing_file_is_an_error(tmp_path):
    assert load_chat_template("{{ messages[0].content }}") == "{{ messages[0].content }}"
    with pytest.raises(ValueError, match="neither an existing file"):
        load_chat_template(str(tmp_path / "missing.jinja"))


def test_hf_template_helpers(tokenizer):
    template = (
        "{% generation %}{{ messages | tojson }}{% endgeneration %}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}!{% endfor %}"
    )
    text = tokenizer.apply_chat_template([{"role": "user", "content": "é"}], chat_template=template)
    assert text == '[{"role": "user", "content": "é"}]!'


def test_sandbox_refuses_dunder_access(tokenizer):
    with pytest.raises(ValueError, match="refused by the sandbox") as info:
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{{ ''.__class__.__mro__ }}")
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError)


def test_sandbox_refuses_mutation(tokenizer):
    with pytest.raises(ChatTemplateError, match="unsafe"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{{ messages.append(1) }}")


def test_raise_exception_and_bad_syntax_become_clear_errors(tokenizer):
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tokenizer.apply_chat_template(messages, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        tokenizer.apply_chat_template(messages, chat_template="{% if %}")


def test_malformed_messages_are_rejected(tokenizer):
    with pytest.raises(ChatTemplateError, match="'role'"):
        tokenizer.apply_chat_template([{"content": "no role"}])
    with pytest.raises(ChatTemplateError, match="content must be a string"):
        tokenizer.apply_chat_template([{"role": "user", "content": 42}])


def test_no_template_at_all_is_a_clear_error(default_model_dir, tmp_path):
    bare = Tokenizer(_copy_tokenizer(default_model_dir, tmp_path / "bare", drop_template=True))
    assert bare.chat_template is None
    with pytest.raises(ChatTemplateError, match="no chat template.*--chat-template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])


def test_encode_chat_has_exactly_one_bos(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    ids = tokenizer.encode_chat(messages)
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
    assert ids[:2] == [IM_START, tokenizer.encode("system")[0]]
    assert ids.count(IM_START) == 3  # two turns and the generation prompt: each opener is the BOS token


def test_encode_chat_with_a_bos_adding_tokenizer(default_model_dir, tmp_path):
    """A tokenizer whose post-processor prepends BOS (Llama-style) must not get a second one from the template."""
    directory = _copy_tokenizer(default_model_dir, tmp_path / "bos")
    spec = json.loads((directory / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    seq_a, seq_b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, seq_a],
        "pair": [bos, seq_a, seq_b],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [IM_START], "tokens": ["<|im_start|>"]}},
    }
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    bos_adding = Tokenizer(directory)
    assert bos_adding.encode("hi") == [IM_START, *bos_adding.encode("hi", add_special_tokens=False)]

    messages = [{"role": "user", "content": "hi"}]
    ids = bos_adding.encode_chat(messages)
    assert ids[0] == IM_START and ids[1] != IM_START
    # A template without the BOS gets the tokenizer's.
    assert bos_adding.encode_chat(messages, chat_template="{{ messages[0].content }}") == bos_adding.encode("hi")


def test_eos_ids_merge_tokenizer_and_model_configs(default_model_dir, tmp_path):
    tokenizer_dir = _copy_tokenizer(default_model_dir, tmp_path / "tok")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [IM_END, ENDOFTEXT]}))
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": ENDOFTEXT}))
    assert Tokenizer(tokenizer_dir, model_path=model_dir).eos_token_ids == (IM_END, ENDOFTEXT)
    assert Tokenizer.from_path(tokenizer_dir).eos_token_ids == (IM_END,)  # no configs: the tokenizer's own


@pytest.mark.slow
def test_a_gguf_file_loads_the_same_tokenizer(tokenizer):
    from radixserve.model.default_model import default_gguf_path

    from_gguf = Tokenizer(default_gguf_path())
    text = "<|im_start|>user\ncafé 中文 😀<|im_end|>"
    assert from_gguf.encode(text) == tokenizer.encode(text)
    assert from_gguf.eos_token_ids == tokenizer.eos_token_ids
    assert from_gguf.chat_template == tokenizer.chat_template
