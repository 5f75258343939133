"""A REST request body read as TF Serving's rapidjson reads it: what it accepts, refuses, and its messages.

TF Serving parses bodies with rapidjson (`kParseNanAndInfFlag`, no encoding validation). orjson reads every body it
reads as the json module does; the others go to the json module, whose errors are mapped to rapidjson's messages
and byte offsets, and whose leniencies (unpaired surrogate escapes, numbers beyond double range) are refused as
rapidjson refuses them.
"""

import contextlib
import gc
import json
import math
import re

import numpy as np
import orjson

from serving import errors
from serving.codec.json_writer import json_value_to_string

_PARSE_ERRORS = {
    # Python's json messages -> rapidjson's (GetParseError_En), which TF Serving reports.
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or '}' after an object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


# A `\uD800`-`\uDFFF` escape: a backslash run of odd length, so not an escaped backslash + text.
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([dD][89a-fA-F][0-9a-fA-F]{2})")


_UTF8_BOM = b"\xef\xbb\xbf"
_HUGE_INTEGER = re.compile(r"-?\d{4301,}")
# The body's number skeleton: every digit as "0", "E" as "e", "+" dropped, and whatever may stand just before a
# number ("[", ",", ":", "-", whitespace) as ",". Skeleton searches are substring searches, one pass over the body,
# where a regular expression would backtrack (a `[0-9]{300}` tries 300 digits from every digit).
_SKELETON = bytes.maketrans(b"0123456789E[:-\t\n\r ", b"0000000000e,,,,,,,")
# In a skeleton: an integer literal of 19 digits or more, beyond what orjson keeps as an integer (it makes those
# below -2**63 or from 2**64 floats, where json keeps Python ints); a three-digit exponent or 300 digits in a row,
# where a number beyond double range may be.
_WIDE_INTEGER = b"," + b"0" * 19
_THREE_DIGIT_EXPONENT = b"e000"
_LONG_DIGIT_RUN = b"0" * 300


def _skeleton(raw: bytes) -> bytes:
    return (b"," + raw).translate(_SKELETON, b"+")


# A JSON number literal (for finding where an overflowing one starts).
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
# rapidjson's kParseNanAndInfFlag also reads Inf, -Inf and -NaN, which Python's json does not; a body the json module
# refuses that holds one is read again with them spelled as json spells them (`_parse_with_rapidjson_constants`).
_RAPIDJSON_ONLY_CONSTANT = re.compile(r"-NaN|Inf(?!inity)")
_STRING_OR_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|-NaN|-?Inf(?!i)')
_JSON_SPELLING = {"-NaN": "NaN", "Inf": "Infinity", "-Inf": "-Infinity"}


class _NumberTooBig(Exception):
    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


def _parse_float(literal: str) -> float:
    """A number with a fraction or exponent; rapidjson refuses one beyond double range (1e999999), where
    Python's float() would return inf. NaN and Infinity are constants and do not come here."""
    value = float(literal)
    if math.isinf(value):
        raise _NumberTooBig(literal)
    return value


def _parse_int(literal: str) -> int:
    """An integer literal; rapidjson stores one beyond 64 bits as a double, and refuses it beyond double
    range."""
    value = int(literal)
    if abs(value) >= 2 ** 64 and math.isinf(float(literal)):
        raise _NumberTooBig(literal)
    return value


def _byte_offset(text: str, index: int) -> int:
    """rapidjson reports offsets in bytes of the UTF-8 body (bytes that are not UTF-8 count one each)."""
    return len(text[:index].encode("utf-8", "surrogateescape"))


def text_bytes(value: str) -> bytes:
    """The bytes a string of a REST body stood for: its UTF-8, with the body's bytes that are not UTF-8 (held as
    lone surrogates, see `parse_json_document`) given back as they came."""
    return value.encode("utf-8", "surrogateescape")


def proto_text(value: str) -> str:
    """A string of a REST body as a protobuf string field can hold it: bytes that are not UTF-8 become U+FFFD
    (TF Serving's C++ protos keep them; a name holding them matches nothing either way)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _check_surrogate_escapes(text: str, base: int = 0):
    """Refuses unpaired surrogate escapes, which rapidjson refuses and Python's json accepts.

    Accepted, a lone `"\\ud800"` becomes a string that no UTF-8 codec encodes, and the request
    fails later as an internal error.
    """
    def invalid(index):
        return errors.InvalidArgument(
            "JSON Parse error: The surrogate pair in string is invalid. at offset: "
            f"{base + _byte_offset(text, index)}")

    if "\\u" not in text:
        return
    high = None  # (start, end) of a high-surrogate escape still waiting for its low half.
    for match in _SURROGATE_ESCAPE.finditer(text):
        start, code = match.end() - 6, int(match.group(1), 16)
        if high is not None and code >= 0xDC00 and start == high[1]:
            high = None
        elif high is not None or code >= 0xDC00:
            raise invalid(high[0] if high is not None else start)
        else:
            high = (start, match.end())
    if high is not None:
        raise invalid(high[0])


def parse_json_document(body) -> dict:
    """Parses a REST request body (bytes or str); like TF Serving it must be one JSON object.

    NaN, (-)Infinity, (-)Inf and -NaN are accepted, as rapidjson's `kParseNanAndInfFlag` does; a number literal
    beyond double range (1e999999) is refused, as rapidjson refuses it. orjson reads the body when it reads it as
    the json module does (faster on a large body of numbers: `benchmarks/rest_json.py`): it refuses NaN, Infinity,
    numbers beyond double range, unpaired surrogate escapes, invalid UTF-8 and nesting deeper than 1,024, and those
    bodies go to the json module, whose errors are mapped to rapidjson's messages and offsets; it reads integer
    literals beyond 64 bits as floats, so a body that may hold one (19 digits or more) goes there too.
    """
    if isinstance(body, bytearray):
        body = bytes(body)
    if not body:
        raise errors.InvalidArgument("JSON Parse error: The document is empty")
    # rapidjson's UTF-8 input stream skips a byte order mark (Windows tools write one); its offsets still count it.
    bom = 0  # bytes before `body`
    if body[:3] == _UTF8_BOM or body[:1] == "\ufeff":
        body, bom = body[3:] if isinstance(body, bytes) else body[1:], 3
    skeleton = _skeleton(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
    doc = None
    if _WIDE_INTEGER not in skeleton:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    if doc is None:  # a JSON null body is not an object either way: the json module says so
        doc = _parse_with_json(body, skeleton, bom)
    if not isinstance(doc, dict):
        raise errors.InvalidArgument(f"JSON Value: {json_value_to_string(doc)} Is not object")
    return doc


def _parse_with_json(body, skeleton: bytes, base: int = 0):
    """The json module's reading of a body orjson did not take, its errors as rapidjson's (offsets from `base`,
    the bytes before `body`).

    Bytes that are not UTF-8 are kept: TF Serving's parser does not validate the encoding (no
    `kParseValidateEncodingFlag`), so a Latin-1 byte inside a string reaches the model as it came. They are read
    as lone surrogates (`surrogateescape`; `text_bytes` gives them back) and, outside a string, fail as rapidjson
    fails there ("Invalid value.").
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", "surrogateescape")
    try:
        # Checking every number costs a Python call each, so only bodies that may hold a huge one pay it.
        maybe_huge = _THREE_DIGIT_EXPONENT in skeleton or _LONG_DIGIT_RUN in skeleton
        doc = (json.loads(body, parse_float=_parse_float, parse_int=_parse_int) if maybe_huge
               else json.loads(body))
    except _NumberTooBig as exc:
        start = next((m.start() for m in _NUMBER.finditer(body) if m.group(0) == exc.literal), 0)
        raise errors.InvalidArgument(
            "JSON Parse error: Number too big to be stored in double. at offset: "
            f"{base + _byte_offset(body, start)}") from None
    except json.JSONDecodeError as exc:
        doc = _parse_with_rapidjson_constants(body, base)
        if doc is not None:
            return doc
        reason = _PARSE_ERRORS.get(exc.msg, "Invalid value.")
        if exc.pos == len(body) and not body.strip(" \t\n\r"):
            reason = "The document is empty."  # only whitespace (or a byte order mark)
        raise errors.InvalidArgument(
            f"JSON Parse error: {reason} at offset: {base + _byte_offset(body, exc.pos)}") from None
    except RecursionError:
        raise errors.InvalidArgument("JSON Parse error: The document is nested too deeply") from None
    except ValueError:
        # Python refuses integer literals of more than 4300 digits (CVE-2020-10735).
        match = _HUGE_INTEGER.search(body)
        raise errors.InvalidArgument(
            "JSON Parse error: Number too big to be stored in double. at offset: "
            f"{base + _byte_offset(body, match.start() if match else 0)}") from None
    _check_surrogate_escapes(body, base)
    return doc


def _parse_with_rapidjson_constants(body: str, base: int):
    """A body the json module refused, read again with rapidjson's own constants (Inf, -Inf, -NaN outside strings)
    spelled as json spells them; None if it has none or still does not parse (the caller then reports the error
    at the body's own offsets). Only refused bodies pay for the rewrite."""
    if not _RAPIDJSON_ONLY_CONSTANT.search(body):
        return None
    spelled = _STRING_OR_CONSTANT.sub(lambda m: _JSON_SPELLING.get(m.group(0), m.group(0)), body)
    if spelled == body:
        return None
    spelled_bytes = spelled.encode("utf-8", "surrogateescape")
    try:
        return _parse_with_json(spelled_bytes, _skeleton(spelled_bytes), base)
    except errors.InvalidArgument:
        return None


# A predict body's "instances" or "inputs" array of at least two chunks is read a chunk at a time
# (`parse_predict_document`): as Python objects a JSON number takes 24-32 bytes and a list slot 8, five to fifteen
# times its text, so a body near the 64 MiB limit parsed whole took over 800 MiB.
CHUNK_BYTES = 1 << 20
_WHITESPACE = rb"[ \t\n\r]*"
_OPEN = re.compile(_WHITESPACE + rb"\{")
_KEY = re.compile(_WHITESPACE + rb'("(?:[^"\\]|\\.)*")' + _WHITESPACE + rb":" + _WHITESPACE)
_SCALAR = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null')
_MEMBER_END = re.compile(_WHITESPACE + rb"([,}])")
_DEFERRABLE_KEYS = {b'"instances"': "instances", b'"inputs"': "inputs"}
# Where a comma may separate two elements of the array (at depth 1), and where the depth changes.
_STRUCTURE = re.compile(rb"[\[\]{},]")
_BRACKET = re.compile(rb"[\[\]{}]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
# orjson refuses a document nested deeper than this; the json module then reads it (`parse_json_document`).
_ORJSON_MAX_DEPTH = 1024


@contextlib.contextmanager
def paused_cyclic_gc():
    """Python's cyclic garbage collector paused (unless it already was): a chunk's lists, made and dropped by the
    hundred thousand, start full collections that walk every object of the process (TensorFlow's are millions)
    -- reading the largest body of one-number rows took four times as long. Parsed JSON holds no cycles, and
    reference counting frees it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class DeferredArray:
    """The "instances" or "inputs" array of a predict body, left as text: runs of whole elements of about
    `CHUNK_BYTES`, each checked at parse time to read (orjson) as the whole body's reading would read it.

    `chunks()` reads them one at a time (a JSON list each); `materialize()` is the array as
    `parse_json_document` reads it.
    """

    def __init__(self, body: bytes, key: str, runs: list):
        self.body = body
        self.key = key
        self._runs = runs  # [(start, end)] of the body: whole elements separated by commas

    def _text(self, start: int, end: int) -> bytes:
        return b"[" + self.body[start:end] + b"]"

    def chunks(self):
        with paused_cyclic_gc():
            for start, end in self._runs:
                yield orjson.loads(self._text(start, end))

    def materialize(self) -> list:
        return parse_json_document(self.body)[self.key]


def _max_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in `text`, strings aside."""
    if b'"' in text:
        text = _STRING.sub(b'""', text)
    codes = np.frombuffer(text, np.uint8)
    steps = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int32)
    steps -= (codes == ord("]")) | (codes == ord("}"))
    return int(np.cumsum(steps).max(initial=0))


def _array_member(body: bytes):
    """(key, start, end, members): the body's top-level "instances" or "inputs" member whose value is an array
    (`body[start:end]`), when every other member is a string, number or literal; None for any other body."""
    match = _OPEN.match(body)
    if match is None:
        return None
    pos, found, members = match.end(), None, 0
    while True:
        key = _KEY.match(body, pos)
        if key is None:
            return None
        pos, members = key.end(), members + 1
        if found is None and key.group(1) in _DEFERRABLE_KEYS and body[pos:pos + 1] == b"[":
            # The array runs to the body's last "]": a member after it holding one fails the scan below.
            end = body.rfind(b"]") + 1
            found, pos = (_DEFERRABLE_KEYS[key.group(1)], pos, end), end
        else:
            value = _SCALAR.match(body, pos)
            if value is None:
                return None
            pos = value.end()
        end_of_member = _MEMBER_END.match(body, pos)
        if end_of_member is None:
            return None
        pos = end_of_member.end()
        if end_of_member.group(1) == b"}":
            break
    if found is None or body[pos:].strip(b" \t\n\r"):
        return None
    return found + (members,)


def _element_runs(body: bytes, start: int, end: int, chunk_bytes: int):
    """The interior of the array `body[start:end]` cut at commas between its elements into runs of about
    `chunk_bytes`: [(start, end)]. A cut is found by counting brackets, which a string holding one miscounts;
    such a run then fails to read alone, and the body is read whole."""
    runs, first, last = [], start + 1, end - 1
    while last - first > chunk_bytes:
        pos = first + chunk_bytes
        depth = 1 + sum(body.count(c, first, pos) for c in (b"[", b"{")) - sum(
            body.count(c, first, pos) for c in (b"]", b"}"))
        while True:
            match = (_STRUCTURE if depth == 1 else _BRACKET).search(body, pos, last)
            if match is None:
                runs.append((first, last))
                return runs
            char, pos = body[match.start()], match.end()
            if char == ord(","):
                break
            depth += 1 if char in b"[{" else -1
            if depth < 1:
                return None
        runs.append((first, pos - 1))
        first = pos
    runs.append((first, last))
    return runs


def parse_predict_document(body, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """A predict body as `parse_json_document` reads it, except that a top-level "instances" or "inputs" array of
    at least two `chunk_bytes` is a `DeferredArray`, read later a chunk at a time (`json_tensors`) -- when the
    body's other members are strings, numbers or literals, "signature_name" is a string, and the body holds one
    of the two keys, each once. Those conditions keep every answer as it was: an error names the whole
    document only where they fail.

    The body is then read as parts -- the document with the array emptied, and the array's chunks -- each as the
    whole body's reading reads it (orjson, unless a part holds a wide integer or is nested too deeply for
    orjson: then the body is read whole); a part that does not read means the body is read whole.
    """
    found = _array_member(body) if isinstance(body, bytes) and len(body) >= 2 * chunk_bytes else None
    if found is None or found[2] - found[1] < 2 * chunk_bytes:
        return parse_json_document(body)
    key, start, end, members = found
    runs = _element_runs(body, start, end, chunk_bytes)
    if runs is None:
        return parse_json_document(body)
    try:
        doc = parse_json_document(body[:start] + b"[]" + body[end:])
    except errors.InvalidArgument:
        return parse_json_document(body)
    if (len(doc) != members or doc.get(key) != [] or ("instances" in doc and "inputs" in doc)
            or not isinstance(doc.get("signature_name", ""), str)):
        return parse_json_document(body)
    deferred = DeferredArray(body, key, runs)
    with paused_cyclic_gc():
        for run in runs:
            text = deferred._text(*run)  # pylint: disable=protected-access
            try:
                readable = (_WIDE_INTEGER not in _skeleton(text) and _max_depth(text) + 1 <= _ORJSON_MAX_DEPTH
                            and orjson.loads(text))
            except orjson.JSONDecodeError:
                readable = False
            if not readable:
                break
    if not readable:
        return parse_json_document(body)
    doc[key] = deferred
    return doc
