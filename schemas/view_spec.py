"""Frozen, validated, JSON round-trippable declaration of a feature view."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from schemas.backbones import (
    BACKBONE_FACTS,
    FACTS_BY_SPEC_NAME,
    INCEPTION_RESNET_V2_TAPS,
    BackboneFacts,
)
from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError

BACKBONE_INCEPTION_RESNET_V2 = "InceptionResNetV2"
MINIMUM_INPUT_SIDE = 75  # smallest side InceptionResNetV2 accepts without a negative feature map
TAP_CHANNELS = dict(INCEPTION_RESNET_V2_TAPS)  # InceptionResNetV2's (the default backbone)
POOLING_KINDS = ("gap", "grid", "spp")
INPUT_POLICY_KINDS = ("orig", "max_side")
STORAGE_DTYPES = ("float16", "float32")
COMPUTE_DTYPES = ("float32", "mixed_float16", "mixed_bfloat16")


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"invalid view spec field {field_name!r}: {message}")


def _positive_ints(values: Any, count: int | None = None) -> bool:
    try:
        items = tuple(values)
    except TypeError:
        return False
    sized = len(items) == count if count is not None else len(items) > 0
    return sized and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items)


@dataclass(frozen=True)
class PoolingSpec:
    """How each tap is pooled before the taps are concatenated on channels.

    Kinds: 'gap' (global average -> [C], the MLSP narrow view), 'grid' (area resize to
    grid = (rows, cols) -> [rows, cols, C], the wide view; written area:K on the CLI), and 'spp'
    (spatial pyramid max pooling over levels, e.g. (1, 2, 3, 6) -> [sum(n * n) * C]).
    """

    kind: str = "gap"
    grid: tuple[int, int] | None = None
    levels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _require(
            self.kind in POOLING_KINDS, "pooling.kind", f"{self.kind!r} not in {POOLING_KINDS}"
        )
        if self.kind == "grid":
            _require(
                self.grid is not None and _positive_ints(self.grid, 2),
                "pooling.grid",
                f"grid pooling needs two positive sizes, got {self.grid!r}",
            )
            object.__setattr__(self, "grid", tuple(int(s) for s in self.grid))  # type: ignore[union-attr]
        else:
            _require(self.grid is None, "pooling.grid", "only grid pooling takes a grid")
        if self.kind == "spp":
            _require(
                self.levels is not None and _positive_ints(self.levels),
                "pooling.levels",
                f"spp needs a non-empty list of positive bin counts, got {self.levels!r}",
            )
            levels = tuple(int(n) for n in self.levels)  # type: ignore[union-attr]
            _require(len(set(levels)) == len(levels), "pooling.levels", f"{levels} repeat")
            object.__setattr__(self, "levels", levels)
        else:
            _require(self.levels is None, "pooling.levels", "only spp pooling takes levels")

    @property
    def flat(self) -> bool:
        """True when one variant's features are a vector (gap, spp), False for grids."""
        return self.kind != "grid"

    @property
    def bins(self) -> int:
        """Cells per tap and channel: sum(n * n) over the spp levels, rows * cols for a grid, 1 gap."""
        if self.kind == "grid":
            assert self.grid is not None
            return self.grid[0] * self.grid[1]
        return sum(n * n for n in self.levels or (1,))

    @property
    def min_map_side(self) -> int:
        """Smallest tap map side that gives every bin a cell of its own (max level for spp)."""
        return max(self.levels) if self.levels else 1

    def feature_shape(self, channels: int) -> tuple[int, ...]:
        """Shape of the pooled, concatenated taps with `channels` channels in all."""
        if self.kind == "grid":
            assert self.grid is not None
            return (*self.grid, channels)
        return (self.bins * channels,)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; 'levels' appears only for spp, so older specs keep their bytes."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "grid": list(self.grid) if self.grid is not None else None,
        }
        if self.levels is not None:
            data["levels"] = list(self.levels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolingSpec:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unknown field or an invalid value.
        """
        reject_unknown_fields(cls, data, "invalid view spec field 'pooling'")
        values = dict(data)
        for key in ("grid", "levels"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class PyramidLayout:
    """How an spp view's flat features regroup into [bins, channels] (features.model.mlsp._spp).

    The flat vector is the taps in order; each tap's segment of bins * C_tap values holds its
    levels in order, each level an n x n grid row-major with channels inner, so the segment
    reshapes to [bins, C_tap] with the same bin order in every tap.

    Attributes:
        bins: sum(n * n) over the levels.
        tap_channels: channels of each tap, in the view's tap order.
    """

    bins: int
    tap_channels: tuple[int, ...]

    @property
    def channels(self) -> int:
        """Channels of all taps together."""
        return sum(self.tap_channels)

    @property
    def size(self) -> int:
        """Length of the flat feature vector."""
        return self.bins * self.channels


@dataclass(frozen=True)
class InputPolicy:
    """Image size fed to the network: 'orig' (no resize) or 'max_side' (downscale to fit).

    min_side: images whose (variant) side is smaller get status too_small; a view's spec
    requires at least its backbone's and pooling's minimum (see FeatureViewSpec).
    """

    kind: str = "orig"
    max_side: int | None = None
    min_side: int = MINIMUM_INPUT_SIDE

    def __post_init__(self) -> None:
        _require(
            self.kind in INPUT_POLICY_KINDS,
            "input_policy.kind",
            f"{self.kind!r} not in {INPUT_POLICY_KINDS}",
        )
        _require(
            isinstance(self.min_side, int) and self.min_side >= 1, "input_policy.min_side", ">= 1"
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


def backbone_facts(spec_name: str) -> BackboneFacts:
    """Facts of a backbone by its spec name ('InceptionV3') or registry name ('inception_v3').

    Raises:
        ConfigError: unknown backbone (the message names the field and the choices).
    """
    facts = FACTS_BY_SPEC_NAME.get(spec_name) or BACKBONE_FACTS.get(spec_name)
    _require(
        facts is not None,
        "backbone",
        f"unknown backbone {spec_name!r}; choose from {', '.join(BACKBONE_FACTS)}",
    )
    assert facts is not None
    return facts


def minimum_input_side(facts: BackboneFacts, pooling: PoolingSpec) -> int:
    """Smallest image side a view of this backbone and pooling accepts.

    The backbone's own minimum, raised for spp until the smallest tap map has max(levels) cells
    per side, so that every bin of every level covers a cell of its own.
    """
    return facts.min_side_for_map(pooling.min_map_side)


@dataclass(frozen=True)
class FeatureViewSpec:
    """Everything that determines the values stored in a view; two equal specs give equal features.

    Attributes:
        name: view name, also its directory in the store.
        backbone: network the taps come from (a BackboneFacts.spec_name, e.g. 'InceptionV3').
        taps: layer names pooled and concatenated, in order (empty = all, in model order).
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
    taps: tuple[str, ...] = ()
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
        facts = backbone_facts(self.backbone)
        _require(
            self.backbone == facts.spec_name,
            "backbone",
            f"specs record {facts.spec_name!r}, not {self.backbone!r}",
        )
        # No taps means all of the backbone's taps, in model order.
        object.__setattr__(self, "taps", tuple(self.taps) or facts.tap_names)
        object.__setattr__(self, "variants", tuple(self.variants))
        unknown = [tap for tap in self.taps if tap not in facts.tap_channels]
        _require(
            not unknown,
            "taps",
            f"{self.backbone} has no layer(s) {unknown[:5]}; choose from {list(facts.tap_names)}",
        )
        _require(len(set(self.taps)) == len(self.taps), "taps", "taps repeat")
        minimum = minimum_input_side(facts, self.pooling)
        _require(
            self.input_policy.min_side >= minimum,
            "input_policy.min_side",
            f"{self.backbone} with {self.pooling.kind} pooling needs images of at least "
            f"{minimum} px, got min_side {self.input_policy.min_side}",
        )
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
    def backbone_name(self) -> str:
        """Registry name of the backbone ('inception_resnet_v2', 'mobilenet_v3_large', ...)."""
        return FACTS_BY_SPEC_NAME[self.backbone].name

    @property
    def channels(self) -> int:
        """Total channels over all taps (16928 for the 43 InceptionResNetV2 'mixed' layers)."""
        tap_channels = FACTS_BY_SPEC_NAME[self.backbone].tap_channels
        return sum(tap_channels[tap] for tap in self.taps)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one variant's features: (C,) for gap, (rows, cols, C) for grid, (bins*C,) spp."""
        return self.pooling.feature_shape(self.channels)

    @property
    def pyramid_layout(self) -> PyramidLayout | None:
        """Bins and per-tap channels of an spp view's flat features; None for gap and grid."""
        if self.pooling.kind != "spp":
            return None
        tap_channels = FACTS_BY_SPEC_NAME[self.backbone].tap_channels
        return PyramidLayout(self.pooling.bins, tuple(tap_channels[tap] for tap in self.taps))

    @property
    def head(self) -> str:
        """Head kind that takes these features: 'narrow' for flat (gap, spp), 'wide' for grids."""
        return "narrow" if self.pooling.flat else "wide"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the spec."""
        data = asdict(self)
        data["taps"] = list(self.taps)
        data["variants"] = list(self.variants)
        data["pooling"] = self.pooling.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureViewSpec:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unknown field, or a value that fails validation.
        """
        reject_unknown_fields(cls, data, "invalid view spec")
        values = dict(data)
        values["pooling"] = PoolingSpec.from_dict(dict(values.get("pooling") or {}))
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


def _predefined(name: str, backbone: str, pooling: PoolingSpec) -> FeatureViewSpec:
    """A predefined view: every tap of the backbone, min_side its (pooling's) minimum."""
    facts = BACKBONE_FACTS[backbone]
    minimum = minimum_input_side(facts, pooling)
    return FeatureViewSpec(
        name=name,
        pooling=pooling,
        backbone=facts.spec_name,
        input_policy=InputPolicy(min_side=minimum),
    )


_AREA_5 = PoolingSpec("grid", (5, 5))
PREDEFINED_VIEWS: dict[str, FeatureViewSpec] = {
    spec.name: spec
    for spec in (
        _predefined(NARROW_VIEW, "inception_resnet_v2", PoolingSpec("gap")),
        _predefined(WIDE_VIEW, "inception_resnet_v2", _AREA_5),
        _predefined("iv3_mlsp_narrow", "inception_v3", PoolingSpec("gap")),
        _predefined("iv3_mlsp_wide", "inception_v3", _AREA_5),
        _predefined("irnv2_spp", "inception_resnet_v2", PoolingSpec("spp", levels=(1, 2, 3, 6))),
        _predefined("mnv3l_mlsp_narrow", "mobilenet_v3_large", PoolingSpec("gap")),
        _predefined("mnv3s_mlsp_narrow", "mobilenet_v3_small", PoolingSpec("gap")),
        _predefined("mnasnet_mlsp_narrow", "mnasnet_a1", PoolingSpec("gap")),
    )
}
