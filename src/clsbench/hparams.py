"""Typed hyperparameters: an approach's settings as a dataclass (field, type, default, help).

An approach with a dataclass (its registry entry's ``hparams``) reads typed fields, never
``hp["..."]``; the config schema's ``hparams`` block of that approach is checked against the
dataclass field by field (tests/test_hparams.py), so the two cannot drift apart::

    @dataclass(frozen=True)
    class EmbedHparams:
        C: float = param(10.0, "inverse L2 regularisation of the logistic regression", exclusiveMinimum=0)

``param`` keeps the JSON-schema constraints of a field beside its default and help; a field whose
schema lives in the schema's ``$defs`` names it with ``ref`` (no default is written for it), one the
type cannot state gives its ``schema`` (e.g. ``oneOf``). A field whose value the embedded config.yaml
ships (``REQUIRED``) has no default here: the shipped value is its one statement, and a partial
config block falls back to it (:func:`clsbench.grid.hparams`). ``fill=False``: the schema writes no
default, so a config without the key leaves it out of a cell's hyperparameters (an optional setting
whose absence means something, such as ``lora_alpha_ratio``). Approaches that share settings inherit
them and change a default with :func:`redefault`.

The schema's block of an approach is printed by ``python -m clsbench.hparams <approach>``; ``python -m
clsbench.hparams --write`` writes every approach's block into the schema file.
"""
from __future__ import annotations

import dataclasses
import types
import typing

from . import UserError

JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array", dict: "object"}
REQUIRED = dataclasses.MISSING  # the field's value comes from config.yaml (stated there, once)


def param(default, help: str, *, ref: str | None = None, choices: tuple | None = None, schema: dict | None = None,
          fill: bool = True, **constraints):
    """A dataclass field with its help and JSON-schema constraints (``minimum``, ``exclusiveMinimum``, ...)."""
    metadata = {"help": help, "ref": ref, "choices": choices, "schema": schema, "fill": fill, "constraints": constraints}
    return field_of(default, metadata)


def field_of(default, metadata):
    if default is REQUIRED:  # keyword-only, so it may follow fields with defaults
        return dataclasses.field(kw_only=True, metadata=metadata)
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def redefault(cls, name: str, default):
    """Field ``name`` of ``cls`` (a shared settings dataclass) with another default (or ``REQUIRED``)
    for the approach that declares it: the same help and constraints."""
    return field_of(default, next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


def default_of(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def typed(cls, hp: dict, where: str, ignore: tuple[str, ...] = ()):
    """``hp`` (a cell's hyperparameters as JSON) as an instance of ``cls``; a key the dataclass does
    not know is named with the keys it does (the schema stops such a key earlier; this guards callers
    that bypass it, e.g. a hand-edited hparams.json). ``ignore``: keys dropped (settings another
    approach's block gives this one, which it does not use)."""
    if isinstance(hp, cls):
        return hp
    hp = {k: v for k, v in hp.items() if k not in ignore}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hp) - known)
    if unknown:
        raise UserError(f"{where}: unknown hyperparameter(s) {unknown} (known: {sorted(known)})")
    missing = sorted(f.name for f in dataclasses.fields(cls) if required(f) and f.name not in hp)
    if missing:
        raise UserError(f"{where}: missing hyperparameter(s) {missing}; a config's approach block gets them from the "
                        "embedded config.yaml, so give them when calling the approach directly")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in hp.items():
        if hints[name] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # YAML's 10 for a float field
        values[name] = value
    return cls(**values)


def schema_properties(cls) -> dict:
    """The config schema's ``properties`` of the approach's hparams block, as the dataclass states them."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("ref"):
            out[f.name] = {"$ref": f"#/$defs/{meta['ref']}"}
            continue
        entry = {}
        if meta.get("schema"):
            entry.update(meta["schema"])
        elif meta.get("choices"):
            entry["enum"] = list(meta["choices"])
        else:
            entry["type"] = json_type(hints[f.name])
        entry.update(meta.get("constraints") or {})
        if not required(f) and meta.get("fill", True):
            entry["default"] = default_of(f)
        entry["description"] = meta["help"]
        out[f.name] = entry
    return out


def required(f: dataclasses.Field) -> bool:
    return f.default is REQUIRED and f.default_factory is dataclasses.MISSING


def json_type(annotation):
    """The JSON-schema type of a field's annotation (``int | None`` -> ``[integer, "null"]``)."""
    if typing.get_origin(annotation) is list:
        return "array"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [json_type(a) if a is not type(None) else "null" for a in typing.get_args(annotation)]
    return JSON_TYPES[annotation]


def schema_block(cls) -> str:
    """The ``properties`` of an approach's hparams block as the schema file writes them (one line each)."""
    import json
    import re

    def dumps(entry) -> str:  # 2e-05 -> 2.0e-05: YAML 1.1 (PyYAML) reads a number without a dot as text
        return re.sub(r"(?<=[:\[, ])(-?\d+)e([-+]?\d+)(?=[,}\]])", r"\1.0e\2", json.dumps(entry))

    return "\n".join(f"          {name}: {dumps(entry)}" for name, entry in schema_properties(cls).items())


def write_schema_blocks(schema_file, classes: dict) -> str:
    """``schema_file``'s text with each approach's ``hparams.properties`` (``classes``: approach ->
    dataclass) written from its dataclass; the rest of the file as it is."""
    lines, out, approach = schema_file.read_text().split("\n"), [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            approach = line.strip()[:-1]  # a $defs entry
        out.append(line)
        i += 1
        if line == "        properties:" and approach in classes and out[-5:-1] == [
                "      hparams:", "        type: object", "        additionalProperties: false", "        default: {}"]:
            while i < len(lines) and lines[i].startswith("          "):
                i += 1
            out.extend(schema_block(classes[approach]).split("\n"))
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    from . import approaches, grid

    if sys.argv[1:] == ["--write"]:  # regenerate every approach's block of the schema file
        grid.SCHEMA.write_text(write_schema_blocks(grid.SCHEMA, {a.name: a.hparams_class
                                                                 for a in approaches.REGISTRY.values()}))
    else:
        print(schema_block(approaches.get(sys.argv[1]).hparams_class))
