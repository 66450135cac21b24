"""A bare name in an expression reads the field of exactly that name, or is refused.

Python's parser folds identifiers to Unicode NFKC, so a fullwidth ``user`` or ``field``
spelled with the ligature U+FB01 would silently read the fields ``user`` and ``field``:
wrong numbers with no error. The compiler refuses such a name with its column
(workers/expressions.py ``_check_names``), and every name it accepts reads the field
spelled as written.
"""

from __future__ import annotations

import keyword
import unicodedata

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from streamherd.workers.expressions import FUNCTIONS, ExpressionError, compile_expression

FULLWIDTH_USER = "\uff55\uff53\uff45\uff52"  # the name `user` to Python's parser
FULLWIDTH_X = "\uff58"
LIGATURE_FIELD = "\ufb01eld"  # `field`
COMBINING_CAFE = "cafe\u0301"  # `café` (one precomposed character)

# Letters, marks, digits and connectors: what identifiers are made of, compatibility forms
# (fullwidth, ligatures, math alphanumerics, combining sequences) included.
NAMES = st.text(
    alphabet=st.characters(categories=["L", "Mn", "Mc", "Nd", "Nl", "Pc"]),
    min_size=1,
    max_size=6,
)


@settings(max_examples=1500, deadline=None)
@given(NAMES)
@example("\uff3f")  # a fullwidth low line: `_` folded, but refused by Python's tokenizer
def test_a_name_reads_the_field_written_or_is_refused(name: str) -> None:
    folded = unicodedata.normalize("NFKC", name)
    assume(name.isidentifier() or folded.isidentifier())
    assume(not keyword.iskeyword(folded) and folded not in FUNCTIONS)
    assume(folded not in ("True", "False", "None", "true", "false", "null", "r"))
    assume(not folded.startswith("__"))  # refused for what it is (no dunder names)
    try:
        read = compile_expression(name).function
    except ExpressionError as error:
        assert folded != name, f"{name!r} refused: {error}"
        assert error.position == 0
        # Refused by our check, naming the folding; or, for a name that is no identifier
        # as written (a fullwidth low line, U+FF3F, folds to `_`), by Python's tokenizer
        # before it, naming the character.
        assert "NFKC" in str(error) or (
            not name.isidentifier() and "invalid character" in str(error)
        ), error
        event("refused: folded")
        return
    event("read as written")
    assert folded == name
    assert read({name: "written", "other": 0}) == "written"


@pytest.mark.parametrize(
    ("text", "position"),
    [
        (FULLWIDTH_USER, 0),
        (f"{LIGATURE_FIELD} > 1", 0),
        (f"x + {FULLWIDTH_X}", 4),
        (f"lower({FULLWIDTH_USER})", 6),
        (COMBINING_CAFE, 0),
        (f"[page, {FULLWIDTH_USER}]", 7),
    ],
)
def test_a_folded_name_is_refused_at_its_position(text: str, position: int) -> None:
    with pytest.raises(ExpressionError, match="NFKC") as refused:
        compile_expression(text)
    assert refused.value.position == position


def test_the_exact_field_is_still_read_by_subscript() -> None:
    read = compile_expression(f"r['{FULLWIDTH_USER}']").function
    assert read({FULLWIDTH_USER: 2, "user": 1}) == 2
    assert compile_expression("caf\u00e9").function({"caf\u00e9": 3}) == 3
