"""Text forms of poolings ('gap', 'area:K', 'spp:1,2,3,6') and of custom views (--view-spec)."""

from __future__ import annotations

from collections.abc import Callable

from schemas.backbones import BACKBONE_FACTS
from schemas.errors import ConfigError
from schemas.view_spec import (
    FeatureViewSpec,
    InputPolicy,
    PoolingSpec,
    backbone_facts,
    minimum_input_side,
)

VIEW_SPEC_FIELDS = ("backbone", "pooling", "name", "taps")
POOLING_SYNTAX = "gap, area:K (or area:ROWSxCOLS), spp:LEVELS (e.g. spp:1,2,3,6)"


def _bad(field: str, message: str) -> ConfigError:
    return ConfigError(f"--view-spec field {field!r}: {message}")


def _integers(text: str, separator: str, field: str) -> tuple[int, ...]:
    parts = text.split(separator)
    if not all(part.strip().isdigit() and int(part) >= 1 for part in parts):
        raise _bad(
            field,
            f"{text!r} is not a list of positive integers separated by {separator!r} "
            f"(poolings: {POOLING_SYNTAX})",
        )
    return tuple(int(part) for part in parts)


def _gap(argument: str) -> PoolingSpec:
    if argument:
        raise _bad("pooling", f"gap takes no argument, got {argument!r}")
    return PoolingSpec("gap")


def _area(argument: str) -> PoolingSpec:
    sizes = _integers(argument, "x", "pooling")
    if len(sizes) not in (1, 2):
        raise _bad("pooling", f"area takes K or ROWSxCOLS, got {argument!r}")
    return PoolingSpec("grid", (sizes[0], sizes[-1]))


def _spp(argument: str) -> PoolingSpec:
    levels = _integers(argument, ",", "pooling")
    if len(set(levels)) != len(levels):
        raise _bad("pooling", f"spp levels repeat: {argument!r}")
    return PoolingSpec("spp", levels=levels)


POOLING_PARSERS: dict[str, Callable[[str], PoolingSpec]] = {"gap": _gap, "area": _area, "spp": _spp}


def parse_pooling(text: str) -> PoolingSpec:
    """Pooling from its text form.

    Raises:
        ConfigError: unknown kind or malformed argument (names the field and the choices).
    """
    kind, _, argument = text.strip().partition(":")
    parser = POOLING_PARSERS.get(kind)
    if parser is None:
        raise _bad("pooling", f"unknown pooling {text!r}; choose from {POOLING_SYNTAX}")
    return parser(argument)


def pooling_text(pooling: PoolingSpec) -> str:
    """Inverse of parse_pooling."""
    if pooling.kind == "grid":
        assert pooling.grid is not None
        rows, cols = pooling.grid
        return f"area:{rows}" if rows == cols else f"area:{rows}x{cols}"
    if pooling.kind == "spp":
        return "spp:" + ",".join(str(n) for n in pooling.levels or ())
    return "gap"


def _fields(text: str) -> dict[str, str]:
    """KEY=VALUE pairs separated by commas; a comma-part without '=' continues the previous value
    (so pooling=spp:1,2,3,6 and taps=mixed0,mixed5 need no quoting)."""
    values: dict[str, str] = {}
    last = ""
    for part in text.split(","):
        key, equals, value = part.partition("=")
        if not equals:
            if not last:
                raise _bad(part.strip(), f"expected KEY=VALUE with KEY in {VIEW_SPEC_FIELDS}")
            values[last] += "," + part
            continue
        key = key.strip()
        if key not in VIEW_SPEC_FIELDS:
            raise _bad(key, f"unknown field; choose from {VIEW_SPEC_FIELDS}")
        if key in values:
            raise _bad(key, "given twice")
        values[key], last = value.strip(), key
    return values


def parse_view_spec(text: str) -> FeatureViewSpec:
    """A custom view from 'backbone=B,pooling=P,name=N[,taps=T1,T2,...]'.

    The view takes every tap of the backbone unless taps are given, and the smallest min_side
    its backbone and pooling allow.

    Raises:
        ConfigError: a missing, unknown or invalid field (the message names it and the choices).
    """
    values = _fields(text)
    for required in ("backbone", "pooling", "name"):
        if not values.get(required):
            raise _bad(required, f"is required (fields: {VIEW_SPEC_FIELDS})")
    if values["backbone"] not in BACKBONE_FACTS:
        raise _bad(
            "backbone", f"unknown {values['backbone']!r}; choose from {', '.join(BACKBONE_FACTS)}"
        )
    facts = backbone_facts(values["backbone"])
    pooling = parse_pooling(values["pooling"])
    taps = tuple(tap.strip() for tap in values.get("taps", "").split(",") if tap.strip())
    unknown = [tap for tap in taps if tap not in facts.tap_channels]
    if unknown:
        raise _bad("taps", f"{facts.name} has no tap {unknown[0]!r}; choose from {facts.tap_names}")
    try:
        return FeatureViewSpec(
            name=values["name"],
            backbone=facts.spec_name,
            pooling=pooling,
            taps=taps,
            input_policy=InputPolicy(min_side=minimum_input_side(facts, pooling)),
        )
    except ConfigError as error:
        raise ConfigError(f"--view-spec {text!r}: {error}") from None
