"""Chat templates: messages -> the prompt text of /v1/chat/completions.

The template is, in order of preference: `--chat_template FILE` (a Jinja template, as in HF's
`tokenizer_config.json`), the tokenizer's own `chat_template`, else `PLAIN_TEMPLATE`:

    system: You are terse.
    user: Hello
    assistant:

(one `role: content` line per message, then `assistant:` for the model to continue). Templates render in
Jinja's sandbox with HF's variables: `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and
`raise_exception(message)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TrtGptError

PLAIN_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")


class ChatTemplate:
    def __init__(self, source: str, text: str):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source, self.text = source, text
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(text)
        except TemplateError as e:
            raise TrtGptError(f"{source}: not a valid Jinja chat template ({e})") from None

    def render(self, messages: list[dict[str, Any]], tokenizer: Any) -> str:
        """The prompt text; a template error is a ValueError (the request's fault: 400)."""
        from jinja2.exceptions import TemplateError

        hf = getattr(tokenizer, "tok", None)
        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=getattr(hf, "bos_token", "") or "",
                                        eos_token=getattr(hf, "eos_token", "") or "")
        except TemplateError as e:
            raise ValueError(f"chat template: {e}") from None


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def load_chat_template(path: str | Path | None, tokenizer: Any) -> ChatTemplate:
    """The template to use (see the module docstring)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TrtGptError(f"{p}: chat template file not found")
        try:
            return ChatTemplate(str(p), p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise TrtGptError(f"{p}: chat template is not UTF-8 text") from None
    own = getattr(getattr(tokenizer, "tok", None), "chat_template", None)
    if isinstance(own, dict):           # named templates: the default one
        own = own.get("default")
    if isinstance(own, str) and own.strip():
        return ChatTemplate("the tokenizer's chat_template", own)
    return ChatTemplate("the plain template", PLAIN_TEMPLATE)
