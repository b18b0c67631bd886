"""Frozen, validated, JSON round-trippable declaration of a feature view."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError

BACKBONE_INCEPTION_RESNET_V2 = "InceptionResNetV2"
MINIMUM_INPUT_SIDE = 75  # smallest side InceptionResNetV2 accepts without a negative feature map


def _inception_resnet_v2_taps() -> tuple[tuple[str, int], ...]:
    """Names and channel counts of every layer whose name contains 'mixed', in model order."""
    taps = [("mixed_5b", 320)]
    taps += [(f"block35_{index}_mixed", 128) for index in range(1, 11)]
    taps += [("mixed_6a", 1088)]
    taps += [(f"block17_{index}_mixed", 384) for index in range(1, 21)]
    taps += [("mixed_7a", 2080)]
    taps += [(f"block8_{index}_mixed", 448) for index in range(1, 11)]
    return tuple(taps)


INCEPTION_RESNET_V2_TAPS = _inception_resnet_v2_taps()
TAP_CHANNELS = dict(INCEPTION_RESNET_V2_TAPS)
POOLING_KINDS = ("gap", "grid")
INPUT_POLICY_KINDS = ("orig", "max_side")
STORAGE_DTYPES = ("float16", "float32")
COMPUTE_DTYPES = ("float32", "mixed_float16", "mixed_bfloat16")


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"invalid view spec field {field_name!r}: {message}")


@dataclass(frozen=True)
class PoolingSpec:
    """How each tap is pooled: 'gap' (global average, narrow) or 'grid' (area resize, wide)."""

    kind: str = "gap"
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _require(
            self.kind in POOLING_KINDS, "pooling.kind", f"{self.kind!r} not in {POOLING_KINDS}"
        )
        if self.kind == "grid":
            _require(
                self.grid is not None and len(self.grid) == 2 and all(s >= 1 for s in self.grid),
                "pooling.grid",
                f"grid pooling needs two positive sizes, got {self.grid!r}",
            )
            object.__setattr__(self, "grid", tuple(int(s) for s in self.grid))  # type: ignore[union-attr]
        else:
            _require(self.grid is None, "pooling.grid", "only grid pooling takes a grid")


@dataclass(frozen=True)
class InputPolicy:
    """Image size fed to the network: 'orig' (no resize) or 'max_side' (downscale to fit)."""

    kind: str = "orig"
    max_side: int | None = None
    min_side: int = MINIMUM_INPUT_SIDE

    def __post_init__(self) -> None:
        _require(
            self.kind in INPUT_POLICY_KINDS,
            "input_policy.kind",
            f"{self.kind!r} not in {INPUT_POLICY_KINDS}",
        )
        if self.kind == "max_side":
            _require(
                self.max_side is not None and self.max_side >= self.min_side,
                "input_policy.max_side",
                f"must be an integer >= {self.min_side}, got {self.max_side!r}",
            )
        else:
            _require(
                self.max_side is None, "input_policy.max_side", "only 'max_side' takes max_side"
            )
        _require(
            self.min_side >= MINIMUM_INPUT_SIDE, "input_policy.min_side", f">= {MINIMUM_INPUT_SIDE}"
        )


@dataclass(frozen=True)
class FeatureViewSpec:
    """Everything that determines the values stored in a view; two equal specs give equal features.

    Attributes:
        name: view name, also its directory in the store.
        backbone: network the taps come from.
        taps: layer names pooled and concatenated, in order.
        pooling: per-tap pooling.
        input_policy: how images are sized before the network.
        variants: augmentation variants, stored along axis 1 of the features array.
        storage_dtype: dtype on disk.
        compute_dtype: Keras precision policy used for the forward pass.
        weights_id: 'imagenet', a weights file path, or 'random:SEED'.
        weights_sha256: digest of the weights actually loaded.
        package_version: version of this package that wrote the view (lineage, not identity).
    """

    name: str
    pooling: PoolingSpec = field(default_factory=PoolingSpec)
    backbone: str = BACKBONE_INCEPTION_RESNET_V2
    taps: tuple[str, ...] = tuple(name for name, _ in INCEPTION_RESNET_V2_TAPS)
    input_policy: InputPolicy = field(default_factory=InputPolicy)
    variants: tuple[str, ...] = ("orig",)
    storage_dtype: str = "float16"
    compute_dtype: str = "float32"
    weights_id: str = "imagenet"
    weights_sha256: str = ""
    package_version: str = "0+unknown"

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and self.name.replace("_", "").replace("-", "").isalnum(),
            "name",
            f"must be letters, digits, '_' or '-', got {self.name!r}",
        )
        _require(
            self.backbone == BACKBONE_INCEPTION_RESNET_V2,
            "backbone",
            f"only {BACKBONE_INCEPTION_RESNET_V2!r} is supported, got {self.backbone!r}",
        )
        object.__setattr__(self, "taps", tuple(self.taps))
        object.__setattr__(self, "variants", tuple(self.variants))
        _require(len(self.taps) > 0, "taps", "at least one tap is needed")
        unknown = [tap for tap in self.taps if tap not in TAP_CHANNELS]
        _require(not unknown, "taps", f"unknown layer(s) {unknown[:5]}")
        _require(len(set(self.taps)) == len(self.taps), "taps", "taps repeat")
        _require(len(self.variants) > 0, "variants", "at least one variant is needed")
        _require(len(set(self.variants)) == len(self.variants), "variants", "variants repeat")
        _require(self.storage_dtype in STORAGE_DTYPES, "storage_dtype", f"not in {STORAGE_DTYPES}")
        _require(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"not in {COMPUTE_DTYPES}")
        _require(bool(self.weights_id), "weights_id", "must not be empty")
        _require(
            self.weights_sha256 == "" or len(self.weights_sha256) == 64,
            "weights_sha256",
            "must be a 64-character hex digest or empty",
        )

    @property
    def channels(self) -> int:
        """Total channels over all taps (16928 for the 43 InceptionResNetV2 'mixed' layers)."""
        return sum(TAP_CHANNELS[tap] for tap in self.taps)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one variant's features: (channels,) for gap, (rows, cols, channels) for grid."""
        if self.pooling.kind == "grid":
            assert self.pooling.grid is not None
            return (*self.pooling.grid, self.channels)
        return (self.channels,)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the spec."""
        data = asdict(self)
        data["taps"] = list(self.taps)
        data["variants"] = list(self.variants)
        if self.pooling.grid is not None:
            data["pooling"]["grid"] = list(self.pooling.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureViewSpec:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unknown field, or a value that fails validation.
        """
        reject_unknown_fields(cls, data, "invalid view spec")
        values = dict(data)
        pooling = dict(values.get("pooling") or {})
        if pooling.get("grid") is not None:
            pooling["grid"] = tuple(pooling["grid"])
        values["pooling"] = PoolingSpec(**pooling)
        values["input_policy"] = InputPolicy(**(values.get("input_policy") or {}))
        for key in ("taps", "variants"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_json(self) -> str:
        """Stable, sorted JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureViewSpec:
        """Parse JSON produced by to_json."""
        return cls.from_dict(json.loads(text))

    def identity(self) -> dict[str, Any]:
        """The fields that decide feature values (lineage-only fields removed)."""
        data = self.to_dict()
        data.pop("package_version")
        return data

    def identity_sha256(self) -> str:
        """Digest of identity(); commit markers carry it to tie rows to a spec."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, other: FeatureViewSpec) -> list[str]:
        """Names of identity fields whose values differ between two specs."""
        mine, theirs = self.identity(), other.identity()
        return sorted(key for key in mine if mine[key] != theirs.get(key))

    def with_weights(self, weights_id: str, weights_sha256: str) -> FeatureViewSpec:
        """Copy with weights lineage filled in."""
        return replace(self, weights_id=weights_id, weights_sha256=weights_sha256)


NARROW_VIEW = "irnv2_mlsp_narrow"
WIDE_VIEW = "irnv2_mlsp_wide"

PREDEFINED_VIEWS: dict[str, FeatureViewSpec] = {
    NARROW_VIEW: FeatureViewSpec(name=NARROW_VIEW, pooling=PoolingSpec("gap")),
    WIDE_VIEW: FeatureViewSpec(name=WIDE_VIEW, pooling=PoolingSpec("grid", (5, 5))),
}
