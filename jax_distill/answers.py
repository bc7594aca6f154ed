"""Answer extraction and equivalence, the one home of these rules: the data pipeline (stage-1 rewrites, trace
filters) and the evaluation both use them. Model text is data: it is scanned and parsed, never evaluated.

Extraction (``extract_answer``):

- ``strict`` (the score): the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched), or an unbraced
  ``\\boxed 5``; boxes that directly precede it, separated only by commas, "and"/"or", spaces or math delimiters,
  belong to the same answer (``\\boxed{3}, \\boxed{5}`` is "3, 5"). No box, no answer.
- ``lenient`` (reported beside it): the strict answer when there is one, else an answer stated in words ("The final
  answer is 33", "**Answer:** $33$"), else the value after the last "=" / "is" that ends the completion.

Equivalence (``is_correct``):

- Integer benchmarks (AIME, AMC): string rules only (``parse_integer``: units, degrees, text wrappers, formatting
  spaces, thousands separators, a trailing period, ``n = 321``, a Unicode minus, number words), then, for a lone
  expression such as ``\\frac{12}{4}``, exact comparison through math-verify's LaTeX parser. Decimals that are not
  integers, several distinct numbers, and approximations are wrong.
- MATH-style answers: the same normalisations, string match, integer match, comma lists compared as sets, then
  mathematical equivalence through HF's math-verify, LaTeX extraction only (its ANTLR-based LaTeX parser, never
  sympy's string ``parse_expr``/``sympify``), with a time limit per check.

Every scan is linear in the completion length (hostile completions cost O(n)); answers are at most
``MAX_ANSWER_CHARS`` long before any parser sees them.
"""

from __future__ import annotations

import re
from typing import Literal

MAX_COMPLETION_CHARS = 1_000_000  # longer completions are graded on their tail (where the final answer is)
MAX_ANSWER_CHARS = 1_000
BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")  # the opening of a box, up to its "{"
# An unbraced box: LaTeX boxes one token, but models write "\boxed 204" meaning the whole number.
_BOX_BARE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*(?P<arg>[-+\u2212]?\d+(?:[.,]\d+)*)")
# What may stand between two boxes of one answer ("\boxed{3}, \boxed{5}", "$\boxed{3}$ and $\boxed{5}$").
_BOX_GAP = re.compile(r"(?:\s|[,;&]|\$|\\[()\[\]]|\\[,;: ]|\\q?quad\b|~|\band\b|\bor\b|"
                      r"\\text\s*\{\s*(?:,|and|or)?\s*\}|"
                      r"\b[A-Za-z](?:_\{?[A-Za-z0-9]{1,3}\}?)?\s*=)*")  # "x = \boxed{-2} or x = \boxed{1}"
_MAX_BOX_GAP = 80
_MAX_BOXES = 10

Mode = Literal["strict", "lenient"]
Kind = Literal["integer", "math"]


# --------------------------------------------------------------------------------------------------- extraction


def _box_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every outermost complete box in ``text``, in order. One linear pass."""
    opens = {m.end() - 1: m.start() for m in BOX_OPEN.finditer(text)}  # index of a box's "{" -> its "\boxed"
    spans: list[tuple[int, int, str]] = []
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            if start in opens:
                spans.append((opens[start], i + 1, text[start + 1: i]))
        i += 1
    for m in _BOX_BARE.finditer(text):
        spans.append((m.start(), m.end(), m.group("arg")))
    spans.sort()
    outer: list[tuple[int, int, str]] = []
    reach = -1
    for s in spans:  # spans are properly nested or disjoint: keep the ones no earlier span contains
        if s[1] > reach:
            outer.append(s)
            reach = s[1]
    return outer


def _unbox(content: str) -> str:
    content = content.strip()
    for _ in range(3):  # "\boxed{\boxed{5}}"
        m = BOX_OPEN.match(content)
        if not (m and content.endswith("}")):
            break
        inner = content[m.end(): -1]
        if inner.count("{") != inner.count("}"):
            break
        content = inner.strip()
    return content


def extract_boxes(text: str | None) -> list[str]:
    """Contents of the final answer's boxes: the last box and the boxes directly before it (separated only by
    commas, "and"/"or", spaces or math delimiters), identical neighbours merged. [] when there is no box."""
    if not isinstance(text, str) or not text:
        return []
    text = text[-MAX_COMPLETION_CHARS:]
    spans = _box_spans(text)
    if not spans:
        return []
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        if len(group) >= _MAX_BOXES:
            break
        gap = text[prev[1]: group[-1][0]]
        if len(gap) > _MAX_BOX_GAP or not _BOX_GAP.fullmatch(gap):
            break
        group.append(prev)
    out: list[str] = []
    total = 0
    for _, _, content in reversed(group):
        content = _unbox(content)
        if out and out[-1] == content:
            continue
        total += len(content) + 2
        out.append(content)
    if total - 2 > MAX_ANSWER_CHARS:
        last = out[-1]
        return [last] if len(last) <= MAX_ANSWER_CHARS else []
    return out


def extract_boxed(text: str | None) -> str | None:
    """Content of the last complete ``\\boxed{...}`` in ``text`` (nested braces handled), or None.

    One linear pass with a brace stack, so hostile inputs (thousands of unclosed boxes) cost O(n)."""
    if not isinstance(text, str) or not text:
        return None
    spans = _box_spans(text[-MAX_COMPLETION_CHARS:])
    if not spans:
        return None
    content = _unbox(spans[-1][2])
    return content if len(content) <= MAX_ANSWER_CHARS else None


# "The final answer is", "the answer is", "Answer:", "**Final Answer:**", "answer would be", "answer ="
_ANSWER_PHRASE = re.compile(r"(?i)\banswer\**[ \t]*(?:is\b|would be\b|[:=\uff1a])[ \t]*:?|"
                            r"\bfinal answer\**[ \t]*(?=\n)")
_SENTENCE_END = re.compile(r"\n|\.(?=\s|$|\*)|;|,\s+(?=[A-Za-z])|\s+(?:I hope|since|because|which|as)\b|\s\(")
_MATH_SPAN = re.compile(r"\$\$(?P<a>[^$]{1,300})\$\$|\$(?P<b>[^$\n]{1,300})\$|\\\((?P<c>.{1,300}?)\\\)|"
                        r"\\\[(?P<d>.{1,300}?)\\\]", re.S)
_TAIL_ANCHOR = re.compile(r"=|\bis\b|\bequals\b|\bget\b")


def _phrase_value(chunk: str) -> str | None:
    chunk = chunk.lstrip(" \t\n*:#")
    m = _MATH_SPAN.match(chunk)
    if m:
        value = next(v for v in m.groups() if v is not None)
    else:
        end = _SENTENCE_END.search(chunk)
        value = chunk[: end.start()] if end else chunk
    value = value.strip().strip("*").strip()
    return value if 0 < len(value) <= 200 else None


def _lenient_answer(text: str) -> str | None:
    tail = text[-MAX_COMPLETION_CHARS:]
    last = None
    for last in _ANSWER_PHRASE.finditer(tail):
        pass
    if last is not None:
        value = _phrase_value(tail[last.end(): last.end() + 400])
        if value is not None:
            return value
    # The completion ends on "... = 33." / "... is $33$." (a display block ending the text counts as its line).
    end = tail.rstrip()[-600:]
    end = re.sub(r"(?:\\\]|\$\$)\s*$", "", end).rstrip()
    line = end.rsplit("\n", 1)[-1] if "\n" in end else end
    line = re.sub(r"\$|\\[()\[\]]", "", line[-300:])
    last = None
    for last in _TAIL_ANCHOR.finditer(line):
        pass
    if last is None:
        return None
    value = line[last.end():].strip().rstrip(".!*").strip()
    return value if 0 < len(value) <= 80 else None


def extract_answer(text: str | None, mode: Mode = "strict") -> str | None:
    """The final answer of a completion, or None.

    ``strict``: the boxed answer (several adjacent boxes joined with ", "). ``lenient``: the boxed answer when there is
    one, else an answer stated without a box ("The final answer is 33", "Answer: 33", or a completion that ends on
    "= 33" / "is 33")."""
    if mode not in ("strict", "lenient"):
        raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
    boxes = extract_boxes(text)
    if boxes:
        return ", ".join(boxes)
    if not isinstance(text, str) or not text:
        return None
    if mode == "lenient":
        ans = _lenient_answer(text)
        if ans is None or len(ans) > MAX_ANSWER_CHARS or re.search(r"\\(?:boxed|fbox)(?![A-Za-z])", ans):
            return None  # a box left unclosed (a truncated completion) is no answer in either mode
        return ans
    return None


# ------------------------------------------------------------------------------------------------ normalisation

_UNICODE = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-",
                          "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2007": " ", "\u2008": " ",
                          "\u200a": " ", "\u3000": " ", "\u200b": "", "\u00d7": "\\times ", "\u00b7": "\\cdot "})
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|textnormal|mathrm|mathbf|mathit|mathsf|mathtt|"
                      r"mathnormal|boldsymbol|bm|mbox|hbox|operatorname)\s*\{")
_SPACING = re.compile(r"\\(?:[,;: >]|thinspace|enspace|medspace|thickspace|q?quad)(?![A-Za-z])|~|"
                      r"\\hspace\*?\s*\{[^{}]*\}")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|(?<=\d)\s*\\circ(?![A-Za-z])|\u00b0|"
                      r"\\degree(?![A-Za-z])|\^\s*\{\s*\\degree\s*\}")
_DELIMS = re.compile(r"\\\$|\$|\\[()\[\]]|\\displaystyle(?![A-Za-z])|\\left(?![A-Za-z])\.?|\\right(?![A-Za-z])\.?|"
                     r"\\!")
_CURRENCY = re.compile(r"\\(?:euro|pounds|textdollar|yen)(?![A-Za-z])|[\u20ac\u00a3\u00a5]")
_PMOD = re.compile(r"\s*(?:\\pmod\s*\{[^{}]*\}|\\pmod\s*\d+|"
                   r"\(\s*\\?(?:b?mod|text\s*\{\s*mod\s*\})\s*\{?\s*\d+\s*\}?\s*\)|\\b?mod\s*\{?\s*\d+\s*\}?)\s*$")
# A trailing unit inside a text command ("\text{ minutes}", "\text{ cm}^2"): letters, no digits.
_TEXT_UNIT = re.compile(r"\s*\\(?:text|textrm|textit|mathrm|mbox|operatorname)\s*\{[^{}0-9]*[A-Za-z][^{}0-9]*\}"
                        r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$")
_PLAIN_UNIT = re.compile(r"(?<=\d)\s+(?P<w>[A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,3})\.?(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$")
# Words after a number that are mathematics, not a unit: "3 pi" is not 3.
_NOT_UNITS = {"pi", "sqrt", "ln", "log", "sin", "cos", "tan", "cot", "sec", "csc", "exp", "mod", "pmod", "and", "or",
              "plus", "minus", "times", "divided", "to", "cdot", "not", "but", "with", "squared", "cubed",
              "root", "roots", "factorial", "choose", "infty", "infinity", "frac", "dfrac", "million", "billion",
              "thousand", "hundred", "thousands", "hundreds", "millions", "billions", "dozen", "percent", "halves",
              "half", "thirds", "quarters", "more", "less", "fewer", "than", "least", "most", "about", "approximately",
              "roughly", "nearly", "almost", "over", "under", "maybe", "possibly"}
_LABEL = re.compile(r"(?i)^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|[:=])?\s*")
_CHOICE = re.compile(r"^\s*\(\s*[A-E]\s*\)\s*(?=[-+]?\d)")
_NUMBER = re.compile(r"([+-]?)\s?(\d{1,3}(?:[, ]\d{3})+|\d{1,30})(?:\.0*)?")
_SUBSCRIPT = re.compile(r"_\s*(?:\{[^{}]*\}|\\?[A-Za-z0-9])")

_SMALL = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER_WORD = re.compile(r"(?i)(?P<small>" + "|".join(_SMALL) + r")|(?P<tens>" + "|".join(_TENS) + r")"
                          r"(?:[-\s]+(?P<unit>" + "|".join(_SMALL[1:10]) + r"))?|(?:one|a)\s+hundred")


_SHORT_UNITS = {"cm", "km", "mm", "kg", "mg", "ft", "mi", "hr", "ml", "lb", "oz", "ms", "yd", "in", "mL", "am", "pm"}


def _is_unit(text: str) -> bool:
    """Whether trailing words are a unit ("minutes", "cm", "square feet"), not mathematics ("pi", "or more")."""
    words = re.findall(r"[A-Za-z]+", re.sub(r"\\[A-Za-z]+", " ", text))
    return bool(words) and all(w.lower() not in _NOT_UNITS and (len(w) >= 3 or w in _SHORT_UNITS) for w in words)


def _number_word(s: str) -> int | None:
    """zero..ninety-nine and "one hundred" spelled out (whole string), else None."""
    m = _NUMBER_WORD.fullmatch(s.strip())
    if not m:
        return None
    if m.group("small"):
        return _SMALL.index(m.group("small").lower())
    if m.group("tens"):
        unit = m.group("unit")
        return 20 + 10 * _TENS.index(m.group("tens").lower()) + (_SMALL.index(unit.lower()) if unit else 0)
    return 100


def _close_brace(s: str, open_at: int) -> int:
    """Index of the "}" matching the "{" at ``open_at`` (escaped braces skipped), or -1."""
    depth, i = 0, open_at
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


_BOLD = re.compile(r"\\(?:mathbf|boldsymbol|bm|textbf)\s*\{")


def _unwrap(s: str, wrapper: re.Pattern = _WRAPPER) -> str:
    """"\\mathbf{\\frac{1}{2}}" -> "\\frac{1}{2}", "\\text{ minutes}" -> " minutes": text and font commands dropped,
    their content kept (nested braces matched; answers are at most MAX_ANSWER_CHARS long)."""
    for m in reversed(list(wrapper.finditer(s))):
        close = _close_brace(s, m.end() - 1)
        if close > 0:
            s = s[: m.start()] + s[m.end(): close] + s[close + 1:]
    return s


def _strip_braces(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}" and "{" not in s[1:-1] and "}" not in s[1:-1]:
        s = s[1:-1].strip()
    return s


def _base_normalize(s: str) -> str:
    """Notation-only rewrites shared by every comparison: Unicode minus and spaces, math delimiters, \\left/\\right,
    formatting spaces, "{,}", a trailing period."""
    s = s.translate(_UNICODE)
    s = _DELIMS.sub("", s)
    s = s.replace("{,}", ",")
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip()
    return re.sub(r"\s*\.$", "", s).strip()


def _join_thousands(s: str) -> str:
    """"3 159" (from "3\\,159", a thin space: groups of three digits after a 1-3 digit head) -> "3159". Commas are
    left alone: "(0,125)" is a pair; a whole-number "1,000" is read by parse_integer."""
    return re.sub(r"(?<![\d.])\d{1,3}(?: \d{3})+(?![\d]|\.\d)", lambda m: m.group(0).replace(" ", ""), s)


def _integer_core(s: str) -> int | None:
    """The integer an answer states after notation is stripped; ``s`` has had _base_normalize."""
    for _ in range(2):
        m = _TEXT_UNIT.search(s)
        if m and _is_unit(m.group(0)) and re.search(r"\d", s[: m.start()]):
            s = s[: m.start()].strip()
    s = _strip_braces(_unwrap(s))
    s = _DEGREES.sub("", s)
    s = _CURRENCY.sub("", s)
    s = re.sub(r"\s*\\?%$", "", s)
    s = _PMOD.sub("", s)
    s = _LABEL.sub("", s)
    s = _CHOICE.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if "=" in s or "\\equiv" in s:
        parts = re.split(r"=|\\equiv(?![A-Za-z])", s)
        lhs, rest = parts[0], parts[1:]
        if re.search(r"\d", _SUBSCRIPT.sub("", lhs)) or len(lhs) > 40 or not lhs.strip():
            return None
        if any(re.search(r",|\band\b|\bor\b|\\(?:approx|pm|mp)", p) for p in parts[:-1]):
            return None
        value = _integer_core(rest[-1].strip())
        for mid in rest[:-1]:  # "m+n = 3 + 318 = 321": a middle that is a different integer contradicts
            other = _integer_core(mid.strip()) if mid.strip() else None
            if other is not None and other != value:
                return None
        return value
    word = _number_word(s)
    if word is not None:
        return word
    m = _PLAIN_UNIT.search(s)
    if m and _is_unit(m.group("w")):
        s = s[: m.start()].strip()
    s = _strip_braces(s)
    m = _NUMBER.fullmatch(s)
    if not m:
        return None
    return int(m.group(1) + re.sub(r"[, ]", "", m.group(2)))


def parse_integer(answer: str | None) -> int | None:
    """The integer an answer states, by string rules only (nothing is evaluated), or None.

    "073", "$73$", "73.0", "721.", "1,000", "3\\,159", "\\text{73}", "\\mathbf{116}", "23^\\circ", "90°",
    "204 \\text{ minutes}", "n = 321", "\\,259\\,", "−5" (Unicode minus), "\\text{three}", "321 \\pmod{1000}" are
    integers; "3.5", "7/2", "2\\sqrt{3}", "3, 5", "x" are not."""
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    s = _base_normalize(answer)
    if not s:
        return None
    return _integer_core(s)


def _canonical(answer: str) -> str:
    """A string form for exact matching and maj@k votes: notation stripped, spaces removed."""
    s = _base_normalize(answer)
    s = _join_thousands(s)
    s = _DEGREES.sub("", s)
    s = _unwrap(s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\s+", "", s)
    return _strip_braces(s)


def _for_math_verify(answer: str) -> str:
    """Notation rewrites before math-verify's LaTeX parser: its parser reads "3\\,159" as 3+159 and "721." not at
    all; a number word becomes its digits."""
    s = _base_normalize(answer)
    s = _join_thousands(s)
    s = _unwrap(s, _BOLD)
    s = _LABEL.sub("", s)
    word = _number_word(_unwrap(s))
    return str(word) if word is not None else s


def normalize_for_vote(answer: str | None) -> str | None:
    """Key under which equivalent-looking answers vote together in maj@k (integers canonicalised)."""
    if answer is None:
        return None
    i = parse_integer(answer)
    if i is not None:
        return str(i)
    return _canonical(answer)


# ------------------------------------------------------------------------------------------------- equivalence


def _math_verify_parse(latex: str, timeout: int):
    from math_verify import LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    return parse(f"${latex}$", extraction_config=config, parsing_timeout=timeout)


def _math_verify_equal(gold: str, pred: str, timeout: int) -> bool:
    from math_verify import verify

    try:
        g = _math_verify_parse(gold, timeout)
        p = _math_verify_parse(pred, timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a hostile or malformed answer is wrong, never a crash
        return False


# A lone expression math-verify may reduce to an integer ("\frac{12}{4}", "10^{3}", "\binom{5}{2}"): no lists, no
# alternatives, no decimals (float tolerance), no relations, no subscripts (bases: "101_2"), no brackets or sets, no
# huge or nested exponents.
_NOT_A_LONE_EXPR = re.compile(r"[,;.=<>_\[\]]|\\[{}]|\\(?:pm|mp|approx|sim|le|ge|leq|geq|neq|ne|lt|gt|in|cup|cap|"
                              r"text|mbox|overline|bar)(?![A-Za-z])|\b(?:and|or)\b|\^\s*\{?[^{}]*\^|"
                              r"\^\s*\{?\s*\d{3,}|!\s*!|\d{7,}")


def _integer_by_math_verify(pred: str, gold: int, timeout: int) -> bool:
    s = _base_normalize(pred)
    if not s or len(s) > 200 or _NOT_A_LONE_EXPR.search(s):
        return False
    try:
        import sympy
        from math_verify import verify

        p = _math_verify_parse(s, timeout)
        if not p or not isinstance(p[0], sympy.Expr) or p[0].free_symbols or not p[0].is_number:
            return False
        return bool(verify([sympy.Integer(gold)], [p[0]], timeout_seconds=timeout))
    except Exception:  # noqa: BLE001
        return False


def _split_list(answer: str) -> list[str]:
    """Top-level comma-separated parts of an answer (commas inside braces/brackets/parentheses stay)."""
    parts, depth, cur = [], 0, []
    for ch in answer:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _is_bare_list(answer: str) -> list[str] | None:
    """Elements of a comma list written without enclosing brackets ("3, 5"), after notation is stripped; None when the
    answer is one element or a thousands-separated number."""
    if parse_integer(answer) is not None:
        return None
    s = _join_thousands(_base_normalize(answer))
    s = re.sub(r"\\text\s*\{\s*(?:and|or)\s*\}|\s\b(?:and|or)\b\s", ", ", s)
    parts = _split_list(s)
    if len(parts) < 2 or len(parts) > _MAX_BOXES * 2 or any(not p for p in parts):
        return None
    return parts


def _is_correct_math(pred: str, gold: str, timeout: int, depth: int = 0) -> bool:
    if _canonical(pred) == _canonical(gold):
        return True
    g_int, p_int = parse_integer(gold), parse_integer(pred)
    if "=" in gold and "=" in pred and _canonical(gold.split("=")[0]) != _canonical(pred.split("=")[0]):
        g_int = p_int = None  # "x = 5" is not "y = 5": let math-verify compare the equations
    if g_int is not None and p_int is not None:
        return g_int == p_int
    g_list = _is_bare_list(gold) if depth == 0 else None
    if g_list is not None:  # "Enter all solutions, separated by commas": compare as sets
        p_list = _is_bare_list(pred)
        if p_list is None:
            return _math_verify_equal(_for_math_verify(gold), _for_math_verify(pred), timeout)
        uniq: list[str] = []
        for p in p_list:
            if not any(_canonical(p) == _canonical(q) for q in uniq):
                uniq.append(p)
        if len(uniq) != len(g_list):
            return False
        unmatched = list(g_list)
        for p in uniq:
            hit = next((g for g in unmatched if _is_correct_math(p, g, timeout, depth + 1)), None)
            if hit is None:
                return False
            unmatched.remove(hit)
        return True
    if g_int is not None and _is_bare_list(pred) is not None:
        return False  # several values for one number
    return _math_verify_equal(_for_math_verify(gold), _for_math_verify(pred), timeout)


def is_correct(pred_answer: str | None, gold: str, kind: Kind, timeout: int = 5) -> bool:
    """Grade an extracted answer against the reference answer."""
    if not isinstance(pred_answer, str) or not pred_answer.strip() or len(pred_answer) > MAX_ANSWER_CHARS:
        return False
    gold = str(gold)
    if kind == "integer":
        g = parse_integer(gold)
        if g is None:
            return False
        p = parse_integer(pred_answer)
        if p is not None:
            return p == g
        return _integer_by_math_verify(pred_answer, g, timeout)
    return _is_correct_math(pred_answer, gold, timeout)


def grade(completion: str | None, gold: str, kind: Kind, timeout: int = 5,
          mode: Mode = "strict") -> tuple[str | None, bool]:
    """(extracted answer, correct) for one completion; ``mode`` as in ``extract_answer``."""
    ans = extract_answer(completion, mode)
    return ans, is_correct(ans, gold, kind, timeout)
