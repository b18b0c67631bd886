"""Shared from_dict guard for frozen config dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.errors import ConfigError


def reject_unknown_fields(config_class: type, data: Mapping[str, Any], label: str) -> None:
    """Raise ConfigError naming every key of data that config_class does not declare.

    Args:
        config_class: a dataclass type.
        data: the mapping about to be passed to it.
        label: how the message names the config (e.g. "fetch config").

    Raises:
        ConfigError: data has keys the dataclass does not declare.
    """
    unknown = sorted(set(data) - set(getattr(config_class, "__dataclass_fields__", {})))
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {unknown}")
