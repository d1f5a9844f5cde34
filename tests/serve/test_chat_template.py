"""Which chat template the server uses (file, else the tokenizer's, else the plain one) and what each
renders, against the expected prompt text written out by hand."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from trt_gpt.errors import TrtGptError
from trt_gpt.serve.chat_template import load_chat_template

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _tokenizer(template=None):
    return SimpleNamespace(tok=SimpleNamespace(chat_template=template, bos_token="<s>", eos_token="</s>"))


def test_plain_template_when_the_tokenizer_has_none():
    t = load_chat_template(None, _tokenizer())
    assert t.source == "the plain template"
    assert t.render(MESSAGES, _tokenizer()) == "system: Be brief.\nuser: Hi\nassistant:"


def test_the_tokenizers_template_then_the_file_over_it(tmp_path):
    own = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
    tok = _tokenizer(own)
    assert load_chat_template(None, tok).render(MESSAGES, tok) == "<s>[system]Be brief.</s>[user]Hi</s>"
    named = _tokenizer({"default": own, "tool_use": "x"})
    assert load_chat_template(None, named).render(MESSAGES, named).startswith("<s>[system]")
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m.content }}|{% endfor %}")
    t = load_chat_template(f, tok)
    assert t.source == str(f) and t.render(MESSAGES, tok) == "Be brief.|Hi|"


def test_bad_templates(tmp_path):
    with pytest.raises(TrtGptError, match="not found"):
        load_chat_template(tmp_path / "missing.jinja", None)
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    with pytest.raises(TrtGptError, match="bad.jinja: not a valid Jinja chat template"):
        load_chat_template(bad, None)
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% if messages[0].role != 'user' %}{{ raise_exception('first message must be user') }}"
                      "{% endif %}ok")
    t = load_chat_template(strict, None)
    with pytest.raises(ValueError, match="first message must be user"):
        t.render(MESSAGES, None)
    assert t.render(MESSAGES[1:], None) == "ok"
    sandboxed = tmp_path / "escape.jinja"
    sandboxed.write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ValueError):
        load_chat_template(sandboxed, None).render(MESSAGES, None)
