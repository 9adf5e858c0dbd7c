"""What a request asks its output to match: pure data, the key of the compile cache."""

from __future__ import annotations

from dataclasses import dataclass

# kind -> what ``text`` holds
GRAMMAR_KINDS = {
    "json_schema": "a JSON schema, as a JSON string",
    "json_object": "ignored: any JSON object (OpenAI response_format json_object)",
    "regex": "a regular expression the whole output must match",
    "ebnf": "a GBNF/EBNF grammar whose start rule is `root`",
    "structural_tag": "an xgrammar structural tag, as a JSON string (tool calls)",
}


class GrammarError(ValueError):
    """A grammar cannot be compiled, or a token list does not follow one.

    The message is the compiler's own explanation, fit to show to the API client.
    """


@dataclass(frozen=True)
class GrammarSpec:
    """One output constraint. ``kind`` is a key of ``GRAMMAR_KINDS``; equal specs compile once.

    ``text`` is normalised to ``""`` for ``json_object`` so that every json_object request shares
    one compiled grammar.
    """

    kind: str
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise GrammarError(f"unknown grammar kind {self.kind!r}; expected one of {sorted(GRAMMAR_KINDS)}")
        if not isinstance(self.text, str):
            raise GrammarError(f"{self.kind}: the grammar text must be a string, got {type(self.text).__name__}")
        if self.kind == "json_object":
            object.__setattr__(self, "text", "")
