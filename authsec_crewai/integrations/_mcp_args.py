"""An MCP tool's ``inputSchema`` (JSON Schema) as the pydantic model CrewAI wants.

CrewAI tools declare their arguments as a pydantic model (``args_schema``),
from which it builds the schema the model reads and validates the model's
call. An MCP server declares them as JSON Schema. This turns the common part
of JSON Schema (the types, ``required``, defaults, descriptions, ``enum``,
array items, ``anyOf``) into a model whose JSON schema says the same, so the
model sees the server's own argument names and descriptions. What it cannot
express becomes ``Any``: the server still validates the call it receives.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = ["arguments_model"]

_SCALARS: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "null": type(None),
}
_MAX_DEPTH = 8


def _annotation(spec: Any, depth: int = 0) -> Any:
    """The Python type of one JSON Schema (``Any`` for what it cannot say)."""
    if not isinstance(spec, Mapping) or depth > _MAX_DEPTH:
        return Any
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str | int | bool) for v in enum):
        return Literal[tuple(enum)]
    options = spec.get("anyOf") or spec.get("oneOf")
    if isinstance(options, list) and options:
        kinds = [_annotation(option, depth + 1) for option in options]
        if Any in kinds:
            return Any
        union = kinds[0]
        for kind in kinds[1:]:
            union = union | kind
        return union
    kind = spec.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        return _annotation({"anyOf": [{"type": k} for k in kind]}, depth + 1)
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        return list[_annotation(spec.get("items"), depth + 1)]  # type: ignore[misc]
    if kind == "object":
        return dict[str, Any]
    return Any


def _identifier(name: str, index: int) -> str:
    """A field name pydantic accepts; the server's own name stays as the alias."""
    if name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_"):
        return name
    cleaned = re.sub(r"\W", "_", name).strip("_")
    return f"arg{index}_{cleaned}" if cleaned else f"arg{index}"


def arguments_model(tool_name: str, schema: Mapping[str, Any]) -> type[BaseModel]:
    """A pydantic model for ``schema`` (an MCP tool's ``inputSchema``).

    Required properties are required fields; the others are optional, with
    the schema's default or ``None`` (and an argument left at ``None`` is not
    sent: the server applies its own default). Each field's alias is the
    property's name, so a dump ``by_alias`` is the call the server expects.
    """
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = set(schema.get("required") or ())
    fields: dict[str, Any] = {}
    for index, (name, spec) in enumerate(properties.items()):
        annotation = _annotation(spec)
        description = None
        default: Any = None
        if isinstance(spec, Mapping):
            text = spec.get("description") or spec.get("title")
            description = str(text) if text else None
            default = spec.get("default")
        if name in required:
            info = Field(..., alias=name, description=description)
        else:
            annotation = annotation | None if annotation is not Any else Any
            info = Field(default, alias=name, description=description)
        fields[_identifier(str(name), index)] = (annotation, info)
    extra: Literal["forbid", "ignore"] = (
        "forbid" if schema.get("additionalProperties") is False else "ignore"
    )
    title = re.sub(r"\W", "_", tool_name) or "tool"
    model: type[BaseModel] = create_model(
        f"{title}_arguments",
        __config__=ConfigDict(populate_by_name=True, extra=extra),
        **fields,
    )
    return model
