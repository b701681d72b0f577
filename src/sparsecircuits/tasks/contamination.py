"""Find test-split items in training text, so a pretraining corpus can be shown to leave the test
split unseen (docs/internals.md, "Task splits").

An item is one of:

* `ioi_name`: an IOI test name (`ioi.NAMES_TEST`) as a word, case-sensitive ("Don't" counts:
  it carries the token " Don"; "London" and "Donald" do not);
* `year_ending`: a standalone four-digit year of centuries 10-20 (1000-2099, the task's range)
  whose two-digit ending is a test ending (`greater_than.TEST_ENDINGS`), e.g. "1911", "2005";
* `parameter_name`: a docstring test parameter name (`docstring.PARAMS_TEST`) in a parameter
  position: a `def` or `lambda` signature, a reST signature directive (`.. function:: f(op)`),
  or a docstring field (`:param op:`, `:type op:`, `@param op`). Elsewhere these short names
  (`op`, `X`, `N`) are ordinary identifiers and letters of any Python text;
* `ioi_template` / `greater_than_frame`: a test template (`ioi.TEMPLATES_TEST`,
  `greater_than.TEST_TEMPLATES`) filled with any words and numbers, or a fixed phrase of three
  words or more of one, whitespace-normalised.

Test nouns, places and objects are common English words, so they are items only for the task
generators (`tests/tasks/test_splits.py`), not for natural text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sparsecircuits.tasks import docstring, greater_than, ioi

KINDS = ("ioi_name", "year_ending", "parameter_name", "ioi_template", "greater_than_frame")

_NAME = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(ioi.NAMES_TEST) + r")(?![A-Za-z0-9_])")
_ENDINGS = "|".join(f"{e:02d}" for e in greater_than.TEST_ENDINGS)
_YEAR = re.compile(r"(?<![\w.])(?:1\d|20)(?:" + _ENDINGS + r")(?!\w|\.\d)")
_SIGNATURE_START = re.compile(
    r"\bdef\s+\w+\s*\(|"
    r"^\s*\.\.\s+(?:\w+:)?(?:function|method|classmethod|staticmethod|class|decorator|"
    r"coroutinefunction|coroutinemethod|abstractmethod)::\s*[\w.]+\s*\(",
    re.M,
)
_LAMBDA = re.compile(r"\blambda\b([^:\n]*):")
_FIELD = re.compile(r"(?::(?:param|type)\s+(?:[\w\[\]., ]+\s+)?(\w+)\s*:)|(?:@param\s+(\w+))")
_PARAMS_TEST = frozenset(docstring.PARAMS_TEST)


@dataclass(frozen=True)
class ItemHit:
    """One test-split item found in a text: its `kind` (one of `KINDS`), the `item` (name, year,
    parameter name or phrase) and the character offset `start` in the text searched."""

    kind: str
    item: str
    start: int


def template_phrases(template: str, min_words: int = 3) -> list[str]:
    """Return the fixed wording between a template's `{slot}`s, stripped of edge punctuation and
    whitespace-normalised, keeping phrases of at least `min_words` words."""
    pieces = (" ".join(p.split()).strip(" ,.;") for p in re.split(r"\{\w+\}", template))
    return [p for p in pieces if len(re.findall(r"[A-Za-z]+", p)) >= min_words]


def _phrases() -> dict[str, list[str]]:
    ioi_phrases = sorted({p for t in ioi.TEMPLATES_TEST for p in template_phrases(t)})
    frames = sorted({p for t in greater_than.TEST_TEMPLATES for p in template_phrases(t)})
    return {"ioi_template": ioi_phrases, "greater_than_frame": frames}


PHRASES = _phrases()
_SLOT_PATTERNS = {"A": r"\w+", "B": r"\w+", "PLACE": r"\w+", "OBJECT": r"\w+", "noun": r"\w+"}
_SLOT_PATTERNS |= {"xx": r"\d\d", "yy": r"\d\d"}


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex of `template` (whitespace-normalised) with every slot any word or two digits."""
    pieces = re.split(r"(\{\w+\})", " ".join(template.split()))
    return re.compile(
        "".join(_SLOT_PATTERNS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in pieces)
    )


TEMPLATE_REGEXES = {
    "ioi_template": [(t, _template_regex(t)) for t in ioi.TEMPLATES_TEST],
    "greater_than_frame": [(t, _template_regex(t)) for t in greater_than.TEST_TEMPLATES],
}


def _closing_paren(text: str, open_at: int) -> int:
    """Index of the ")" matching the "(" at `open_at` (or the text's end)."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _top_level_parts(inside: str) -> list[tuple[int, str]]:
    """Split a parameter list on top-level commas; return (offset, part) pairs."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inside):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append((start, inside[start:i]))
            start = i + 1
    parts.append((start, inside[start:]))
    return parts


def _parameter_names(text: str) -> Iterator[tuple[str, int]]:
    """Yield (name, offset) of every parameter in a signature or docstring field of `text`."""
    for match in _SIGNATURE_START.finditer(text):
        open_at = match.end() - 1
        inside = text[open_at + 1 : _closing_paren(text, open_at)]
        for offset, part in _top_level_parts(inside):
            name = re.match(r"\s*[\[\s]*\**\s*([A-Za-z_]\w*)", part)
            if name:
                yield name.group(1), open_at + 1 + offset + name.start(1)
    for match in _LAMBDA.finditer(text):
        for offset, part in _top_level_parts(match.group(1)):
            name = re.match(r"\s*\**\s*([A-Za-z_]\w*)", part)
            if name:
                yield name.group(1), match.start(1) + offset + name.start(1)
    for match in _FIELD.finditer(text):
        group = 1 if match.group(1) else 2
        yield match.group(group), match.start(group)


def find_test_items(text: str) -> list[ItemHit]:
    """Return every test-split item in `text` (see the module docstring), in kind order."""
    hits = [ItemHit("ioi_name", m.group(1), m.start(1)) for m in _NAME.finditer(text)]
    hits += [ItemHit("year_ending", m.group(), m.start()) for m in _YEAR.finditer(text)]
    hits += [
        ItemHit("parameter_name", name, at)
        for name, at in _parameter_names(text)
        if name in _PARAMS_TEST
    ]
    flat = " ".join(text.split())
    for kind, templates in TEMPLATE_REGEXES.items():
        for template, regex in templates:
            match = regex.search(flat)
            if match:
                hits.append(ItemHit(kind, template, match.start()))
    for kind, phrases in PHRASES.items():
        for phrase in phrases:
            at = flat.find(phrase)
            if at >= 0:
                hits.append(ItemHit(kind, phrase, at))
    return hits


def contains_test_items(text: str) -> bool:
    """Return True when `text` holds any test-split item."""
    return bool(find_test_items(text))


def count_test_items(texts: Iterable[str]) -> dict[str, dict[str, int]]:
    """Return `{kind: {item: occurrences}}` over `texts` (empty when the texts are clean)."""
    counts: dict[str, dict[str, int]] = {}
    for text in texts:
        for hit in find_test_items(text):
            per_kind = counts.setdefault(hit.kind, {})
            per_kind[hit.item] = per_kind.get(hit.item, 0) + 1
    return counts
