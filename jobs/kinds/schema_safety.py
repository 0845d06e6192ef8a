"""What a user's JSON schema may make a worker do: nothing but check an answer, in linear time.

`extract` schemas and `chat` json_schemas come from the user, and the worker runs them against
model answers. With jsonschema's defaults a schema could make the worker fetch a remote `$ref`
(an http URL was fetched, `file:///etc/hostname` read, a server that never answered stalled the
drain past SIGTERM) and run a backtracking regex (`^(a+)+$` took 32 s on a 30-character answer).

So, at submit (`check_safe`) and again when a validator is built (`safe_validator`):

* references are local: every `$ref`/`$dynamicRef` starts with `#`, points at something in the
  same document, `$id` appears only at the root (an embedded resource would give `#` refs a
  remote base), and `$schema` is the 2020-12 dialect the worker validates with. The whole
  document is searched, data keywords (`const`, `default`...) included: a `$ref` pointer can
  turn any part of the document into a schema;
* the validator's registry refuses to retrieve anything, whatever slips past the check;
* `pattern` and `patternProperties` run on RE2, which matches in linear time. Patterns RE2
  cannot compile (backreferences, lookaround, huge repetitions) are refused with their place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import jsonschema
import re2
from jsonschema import ValidationError
from referencing import Registry
from referencing.exceptions import NoSuchResource

DIALECTS = ("https://json-schema.org/draft/2020-12/schema", "https://json-schema.org/draft/2020-12/schema#")
MAX_PATTERN_CHARS = 2000
# Compiled programs are capped (RE2 refuses, rather than allocates, past this), so a pattern like
# `(a{999}){999}` costs a refusal at submit, not memory in every worker.
RE2_MAX_MEM = 8 << 20
_REF_KEYS = ("$ref", "$dynamicRef")
_ANCHOR_KEYS = ("$anchor", "$dynamicAnchor")


class UnsafeSchema(ValueError):
    """A schema asks for something a worker must not run: `reason`, at `where` (a path in the schema)."""

    def __init__(self, reason: str, where: str = ""):
        super().__init__(f"at {where}: {reason}" if where else reason)
        self.reason, self.where = reason, where


# -- regexes on RE2 -----------------------------------------------------------------------------------

# JSON Schema patterns are ECMA 262, where a code point is written \uXXXX; RE2 spells it \x{XXXX}.
_ECMA_U_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9A-Fa-f]{4})")


def _options() -> Any:
    opts = re2.Options()
    # RE2 logs refused patterns to stderr by default, and a pattern is part of a private schema.
    opts.log_errors = False
    opts.max_mem = RE2_MAX_MEM
    return opts


_OPTIONS = _options()


@lru_cache(maxsize=2048)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program for a JSON Schema pattern; UnsafeSchema (without a place) if RE2 cannot run it."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafeSchema(f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are allowed")
    try:
        return re2.compile(_ECMA_U_ESCAPE.sub(r"\1\\x{\2}", pattern), _OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise UnsafeSchema(
            f"this pattern cannot run on the linear-time regex engine workers use ({reason}); "
            "backreferences, lookahead/lookbehind, \\Z and repetitions over 1000 are not supported: "
            "rewrite the pattern without them"
        ) from e


def search(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


# -- the static check ----------------------------------------------------------------------------------


def _walk(schema: Any) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every object in the document with its path, iteratively (a schema may be deep)."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            yield path, node
            stack.extend(((*path, str(k)), v) for k, v in reversed(node.items()) if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(
                ((*path, str(i)), v) for i, v in reversed(list(enumerate(node))) if isinstance(v, (dict, list))
            )


def _at(path: tuple[str, ...], *more: str) -> str:
    return "/".join((*path, *more)) or "(root)"


def check_safe(schema: Any) -> None:
    """Raise UnsafeSchema, with its place (`where`), for anything a worker must not run."""
    if not isinstance(schema, dict):
        return
    anchors: set[str] = set()
    refs: list[tuple[tuple[str, ...], str, str]] = []
    has_pattern_properties = has_unevaluated = False
    for path, node in _walk(schema):
        for key in _REF_KEYS:
            ref = node.get(key)
            if isinstance(ref, str):
                if not ref.startswith("#"):
                    raise UnsafeSchema(
                        "only local references (#/$defs/NAME) are allowed, since a worker "
                        "never fetches a schema; copy the referenced schema under $defs and refer to it there",
                        _at(path, key),
                    )
                refs.append((path, key, ref))
        for key in _ANCHOR_KEYS:
            if isinstance(node.get(key), str):
                anchors.add(node[key])
        if path and isinstance(node.get("$id"), str):
            raise UnsafeSchema(
                "$id is allowed only at the top of the schema (an embedded $id changes "
                "what references mean); remove it and refer to this part as #/" + "/".join(path),
                _at(path, "$id"),
            )
        dialect = node.get("$schema")
        if isinstance(dialect, str) and dialect not in DIALECTS:
            raise UnsafeSchema(
                "workers validate with JSON Schema 2020-12 and load no other "
                f'meta-schema; remove $schema or set it to "{DIALECTS[0]}"',
                _at(path, "$schema"),
            )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _check_pattern(pattern, _at(path, "pattern"))
        props = node.get("patternProperties")
        if isinstance(props, dict):
            has_pattern_properties = True
            for p in props:
                _check_pattern(p, _at(path, "patternProperties", p))
        if isinstance(node.get("unevaluatedProperties"), (dict, bool)):
            has_unevaluated = True
    if has_pattern_properties and has_unevaluated:
        # jsonschema evaluates unevaluatedProperties with Python's backtracking `re`, out of our reach.
        raise UnsafeSchema(
            "unevaluatedProperties cannot be combined with patternProperties here; "
            "use additionalProperties instead of unevaluatedProperties",
            "(root)",
        )
    for path, key, ref in refs:
        if not _resolves(schema, ref, anchors):
            raise UnsafeSchema(
                f"the reference {ref!r} points at nothing in this schema; fix the path (for example #/$defs/NAME)",
                _at(path, key),
            )


def _check_pattern(pattern: str, where: str) -> None:
    try:
        compile_pattern(pattern)
    except UnsafeSchema as e:
        raise UnsafeSchema(e.reason, where) from e


def _resolves(schema: dict[str, Any], ref: str, anchors: set[str]) -> bool:
    fragment = unquote(ref[1:])
    if not fragment.startswith("/") and fragment:
        return fragment in anchors
    node: Any = schema
    for token in fragment.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


# -- the validator -------------------------------------------------------------------------------------


def _refuse_retrieval(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs class


# A registry that cannot fetch: a reference outside the document fails as Unresolvable, at once.
NO_RETRIEVAL: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]  # attrs class


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError("does not match the pattern")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in known and not any(search(p, k) for p in patterns)]
    if validator.is_type(extra, "object"):
        for k in extras:
            yield from validator.descend(instance[k], extra, path=k)
    elif not extra and extras:
        # Property names are part of the answer: leave them out of the message.
        yield ValidationError(f"{len(extras)} additional properties are not allowed")


SafeValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def safe_validator(schema: dict[str, Any]) -> Any:
    """A 2020-12 validator that never retrieves and matches patterns on RE2. UnsafeSchema if check_safe refuses."""
    check_safe(schema)
    return SafeValidator(schema, registry=NO_RETRIEVAL)
