"""Spacing in an expression never changes the state: properties over generated expressions.

The state fingerprint (workers/fingerprint.py) and the hop plan's layout
(workers/rekeying.py) compare a window's expressions by their tokens, so that an edit of
spacing alone (a line break, an indented continuation line in a YAML block, a comment) is
compatible, and any other edit is not. Both must read the text as the expression compiler
(workers/expressions.py) does: inside parentheses, where line breaks and indentation are
spacing. Generated expressions, each rendered with two random spacings:

- the fingerprint, its named changes and the hop plan's layout are the same for both;
- two expressions the compiler reads differently never get the same normalized text (an
  edit written in another form is not missed);
- a text that the earlier normalization (the bare text's tokens) could read normalizes as
  it did, so no running pipeline's fingerprint moves with this rule.
"""

from __future__ import annotations

import ast
import io
import itertools
import tokenize
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.expressions import parse_expression
from streamherd.workers.fingerprint import (
    changed_fields,
    fingerprint,
    normalize_expression,
    processor_fingerprint,
    same_state,
)
from streamherd.workers.limits import MAX_EXPRESSION_LENGTH
from streamherd.workers.rekeying import PLAN_DIGITS, hop_plan

_SKIP = {
    tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT,
    tokenize.COMMENT,
}  # fmt: skip

Tokens = tuple[str, ...]

atoms = st.sampled_from(
    [
        ("user",), ("bytes",), ("page",), ("geo", ".", "country"), ("r", "[", "'x-y'", "]"),
        ("1",), ("1024",), ("2.5",), ("'a b'",), ("None",), ("True",),
    ]
)  # fmt: skip
BINARY = ["+", "-", "*", "/", "//", "%", "==", "<", ">=", "!=", "and", "or", "in"]


def _parenthesized(inner: st.SearchStrategy[Tokens]) -> st.SearchStrategy[Tokens]:
    # An operand that is not one name or literal is parenthesized, so that every draw is
    # one expression (`a if b if c else d else e` is none).
    return inner.map(lambda t: t if len(t) == 1 else ("(", *t, ")"))


def _chain(inner: st.SearchStrategy[Tokens]) -> st.SearchStrategy[Tokens]:
    """Operands and operators outside any parentheses: where a reading of the bare text
    takes line breaks and indentation for statements'."""
    part = _parenthesized(inner)
    return st.tuples(part, st.lists(st.tuples(st.sampled_from(BINARY), part), min_size=2)).map(
        lambda t: (*t[0], *(token for op, operand in t[1] for token in (op, *operand)))
    )


def _extend(inner: st.SearchStrategy[Tokens]) -> st.SearchStrategy[Tokens]:
    part = _parenthesized(inner)
    return st.one_of(
        st.tuples(part, st.sampled_from(BINARY), part).map(lambda t: (*t[0], t[1], *t[2])),
        inner.map(lambda t: ("(", *t, ")")),
        part.map(lambda t: ("-", *t)),
        part.map(lambda t: ("not", *t)),
        st.tuples(st.sampled_from(["lower", "abs", "str", "len"]), inner).map(
            lambda t: (t[0], "(", *t[1], ")")
        ),
        st.tuples(inner, inner).map(lambda t: ("coalesce", "(", *t[0], ",", *t[1], ")")),
        st.tuples(part, part, part).map(lambda t: (*t[0], "if", *t[1], "else", *t[2])),
        _chain(inner),
    )


expressions = st.recursive(atoms, _extend, max_leaves=6)
#: What a test spells: any expression, or a chain of them at the top.
texts = st.one_of(expressions, _chain(expressions))


def _tokens(text: str) -> list[str] | None:
    try:
        toks = tokenize.generate_tokens(io.StringIO(text).readline)
        return [t.string for t in toks if t.type not in _SKIP]
    except (tokenize.TokenError, SyntaxError):
        return None


#: Spacing between two tokens: blanks, line breaks with any indentation (an indented
#: continuation line, as YAML blocks give; drawn most often, since lines going in and out
#: are what a reading of the bare text stumbles on), a comment to the end of the line.
_indented = st.integers(0, 8).map(lambda n: "\n" + " " * n)
_continued = st.sampled_from([1, 2, 3, 4, 6, 8]).map(lambda n: "\n" + " " * n)
gaps = st.one_of(
    _indented,
    _indented,
    st.sampled_from([" ", "  ", "\t", "\n", " \n"]),
    st.integers(0, 8).map(lambda n: "  # note\n" + " " * n),
)


@st.composite
def spelled(draw: st.DrawFn, tokens: Tokens) -> str:
    """`tokens` as a text, each gap's spacing drawn at random (none where the two tokens
    stay two without it); or one token a line, each line indented at random."""
    lines = draw(st.booleans())
    text = tokens[0]
    for before, token in itertools.pairwise(tokens):
        tight = _tokens(f"({before}{token})") == ["(", before, token, ")"]
        gap = draw(_continued if lines else st.one_of(st.just(""), gaps) if tight else gaps)
        text += gap + token
    # Longer is no expression (the manifest and the compiler refuse it): a deep draw spelled
    # one token a line passed the bound and the compiler raised (a flaky property).
    assume(len(text) <= MAX_EXPRESSION_LENGTH)
    return text


def _window(key_by: str, expression: str) -> ProcessorConfig:
    return ProcessorConfig.model_validate(
        {
            "steps": [
                {
                    "window": {
                        "keyBy": key_by,
                        "size": "60s",
                        "aggregates": [
                            {"name": "n", "function": "count"},
                            {"name": "s", "function": "sum", "expression": expression},
                        ],
                    }
                }
            ]
        }
    )


def _layout(processor: ProcessorConfig) -> str:
    return hop_plan(processor, "json")[:PLAN_DIGITS]


def _reads(text: str) -> str:
    """How the compiler reads `text` (its checked tree), or raises as it does."""
    return ast.dump(parse_expression(text).body)


@settings(max_examples=200, deadline=None)
@given(st.data(), texts)
def test_spacing_keeps_the_fingerprint_and_the_layout(data: st.DataObject, tokens: Tokens) -> None:
    first, second = data.draw(spelled(tokens)), data.draw(spelled(tokens))
    # Both are what the compiler reads as the one expression (the test's own premise).
    assert _reads(first) == _reads(second) == _reads(" ".join(tokens)), (first, second)
    assert normalize_expression(first) == normalize_expression(second) == " ".join(tokens)
    a, b = _window(first, second), _window(second, first)
    (hash_a, desc_a), (hash_b, desc_b) = processor_fingerprint(a), processor_fingerprint(b)
    assert changed_fields(desc_a, desc_b) == []
    assert hash_a == hash_b
    assert _layout(a) == _layout(b)


@settings(max_examples=200, deadline=None)
@given(st.data(), texts, texts)
def test_an_edit_the_compiler_reads_otherwise_is_never_missed(
    data: st.DataObject, one: Tokens, other: Tokens
) -> None:
    first, second = data.draw(spelled(one)), data.draw(spelled(other))
    if _reads(first) == _reads(second):
        return  # the same expression: spacing, the property above
    assert normalize_expression(first) != normalize_expression(second), (first, second)
    a, b = _window(first, "bytes"), _window(second, "bytes")
    (hash_a, desc_a), (hash_b, desc_b) = processor_fingerprint(a), processor_fingerprint(b)
    assert hash_a != hash_b
    assert [c.split(":")[0] for c in changed_fields(desc_a, desc_b)] == ["window.keyBy"]
    assert _layout(a) != _layout(b)


def _earlier_normalization(text: str) -> str:
    """The rule before this one: the bare text's tokens (it raised on a continuation line
    indented less than the line before it but more than the first one); the text as written
    when they could not be read."""
    tokens = _tokens(text.strip())
    return text.strip() if tokens is None else " ".join(tokens)


@settings(max_examples=200, deadline=None)
@given(st.data(), texts)
def test_what_the_earlier_rule_read_normalizes_as_it_did(
    data: st.DataObject, tokens: Tokens
) -> None:
    text = data.draw(spelled(tokens))
    if _tokens(text.strip()) is None:
        return  # the earlier rule could not read it: compared as written (the defect)
    assert normalize_expression(text) == _earlier_normalization(text)


def test_an_indented_continuation_line_is_spacing() -> None:
    # A YAML block scalar whose continuation lines go in and out: valid to the compiler
    # (it reads the text inside parentheses), compared as written before (the bare text's
    # tokens raise "unindent does not match any outer indentation level").
    block = "bytes\n    * 8\n  + 1"
    assert _reads(block) == _reads("bytes * 8 + 1")
    assert normalize_expression(block) == "bytes * 8 + 1"
    running, edited = _window("user", "bytes * 8 + 1"), _window("user", block)
    assert processor_fingerprint(running)[0] == processor_fingerprint(edited)[0]
    assert _layout(running) == _layout(edited)


def test_text_the_compiler_refuses_never_raises_here() -> None:
    # The fingerprint must never raise on what it is given (validate refuses such text).
    samples: list[Any] = ["(", ")", "a) or (b", "'unterminated", "a \\", "\x00", "#", ""]
    for text in samples:
        assert isinstance(normalize_expression(text), str)


def _recorded_by_the_earlier_rule(text: str) -> tuple[str, dict[str, Any]]:
    """(fingerprint, description) a checkpoint written under the earlier rule carries for
    ``_window(text, "bytes")``."""
    _, description = processor_fingerprint(_window(text, "bytes"))
    window = {**description["window"], "keyBy": _earlier_normalization(text)}
    earlier = {**description, "window": window}
    return fingerprint(earlier), earlier


@settings(max_examples=200, deadline=None)
@given(st.data(), texts, texts)
def test_a_checkpoint_of_the_earlier_rule_is_the_same_state_exactly_when_it_is(
    data: st.DataObject, one: Tokens, other: Tokens
) -> None:
    """A checkpoint carries the fingerprint and description it was written under. Where the
    earlier rule compared a text as written, this version's fingerprint of the same spec
    differs: its workers found their own checkpoints foreign after the upgrade (held under
    refuse, discarded under reset). The engine asks :func:`same_state`, which normalizes the
    recorded description again: the same tokens are the same state, any others are not."""
    written, running = data.draw(spelled(one)), data.draw(spelled(other))
    recorded, shape = _recorded_by_the_earlier_rule(written)
    current, _ = processor_fingerprint(_window(running, "bytes"))
    same = same_state(recorded, shape, current)
    # The same tokens, whatever the spacing (the fingerprint's own rule: `(user)` is not
    # `user` to it, erring on the side of "different").
    assert same is (normalize_expression(written) == normalize_expression(running))
    assert not same or _reads(written) == _reads(running)


def test_an_upgrade_keeps_a_running_pipelines_state_whatever_its_spacing() -> None:
    block = "user\n    + ''\n  + ''"  # the earlier rule compared it as written
    recorded, shape = _recorded_by_the_earlier_rule(block)
    current, _ = processor_fingerprint(_window(block, "bytes"))
    assert recorded != current  # the hash moved with the rule
    assert same_state(recorded, shape, current)
    # Recorded descriptions of any shape are judged, never raise.
    for odd in [{}, {"window": 1}, {"window": {"keyBy": 1, "aggregates": [1, {"expression": 2}]}},
                {"window": {"aggregates": "x"}}, {1: 2}]:  # fmt: skip
        assert same_state("0" * 16, odd, current) is False  # type: ignore[arg-type]
    assert same_state("0" * 16, None, current) is False
