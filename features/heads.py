"""MLSP heads (narrow FC chain, wide inception block), targets, EMD loss and a streaming PLCC."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigError
from schemas.labels import AVA_BINS

FC_SIZES = (2048, 1024, 256)
FC_DROPOUT = (0.25, 0.25, 0.5)
INCEPTION_FILTERS = 1024
INCEPTION_SPLIT_FILTERS = 512


@dataclass(frozen=True)
class TargetDefinition:
    """What the head predicts and how it is trained.

    Attributes:
        name: 'mos' or 'distribution'.
        units: output units of the last layer.
        activation: activation of the last layer.
        loss: Keras loss name or a registered loss function's name.
        label_column: label-table column the target comes from.
    """

    name: str
    units: int
    activation: str
    loss: str
    label_column: str


TARGETS: dict[str, TargetDefinition] = {
    "mos": TargetDefinition("mos", 1, "linear", "mean_squared_error", "mos"),
    "distribution": TargetDefinition(
        "distribution", AVA_BINS, "softmax", "earth_movers_distance", "distribution"
    ),
}


def fc_chain(inputs: Any, target: TargetDefinition, name: str = "pred") -> Any:
    """ava-mlsp fc_layers: Dense 2048-1024-256 (ReLU, he_normal, BN, dropout), then the output.

    Args:
        inputs: a rank-2 Keras tensor.
        target: decides the output units and activation.
        name: layer-name prefix; the output layer is called exactly this.

    Returns:
        The output Keras tensor.
    """
    import keras

    x = inputs
    for position, (size, rate) in enumerate(zip(FC_SIZES, FC_DROPOUT, strict=True)):
        x = keras.layers.Dense(
            size, activation="relu", kernel_initializer="he_normal", name=f"{name}_fc{position}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{position}")(x)
        x = keras.layers.Dropout(rate, name=f"{name}_dropout{position}")(x)
    return keras.layers.Dense(
        target.units, activation=target.activation, kernel_initializer="he_normal", name=name
    )(x)


def conv_bn(inputs: Any, filters: int, kernel: tuple[int, int], name: str) -> Any:
    """Conv (no bias, same padding) + BatchNormalization(scale=False) + ReLU."""
    import keras

    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(
        inputs
    )
    x = keras.layers.BatchNormalization(scale=False, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def inception_block(inputs: Any, name: str = "inception") -> Any:
    """Three branches on the feature grid, concatenated: 1x1; 1x1 -> (1x3, 3x1); avgpool -> 1x1.

    Returns:
        [N, rows, cols, 3072] Keras tensor.
    """
    import keras

    branch_1x1 = conv_bn(inputs, INCEPTION_FILTERS, (1, 1), f"{name}_b1")
    reduced = conv_bn(inputs, INCEPTION_FILTERS, (1, 1), f"{name}_b2")
    branch_1x3 = conv_bn(reduced, INCEPTION_SPLIT_FILTERS, (1, 3), f"{name}_b2a")
    branch_3x1 = conv_bn(reduced, INCEPTION_SPLIT_FILTERS, (3, 1), f"{name}_b2b")
    pooled = keras.layers.AveragePooling2D(
        (3, 3), strides=(1, 1), padding="same", name=f"{name}_pool"
    )(inputs)
    branch_pool = conv_bn(pooled, INCEPTION_FILTERS, (1, 1), f"{name}_b3")
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")(
        [branch_1x1, branch_1x3, branch_3x1, branch_pool]
    )


def build_narrow(input_shape: Sequence[int], target: TargetDefinition) -> Any:
    """Narrow head: the FC chain on the [channels] GAP features."""
    import keras

    inputs = keras.Input(tuple(input_shape), name="features")
    return keras.Model(inputs, fc_chain(inputs, target), name="mlsp_narrow_head")


def build_wide(input_shape: Sequence[int], target: TargetDefinition) -> Any:
    """Wide head: inception block on the [rows, cols, channels] grid, GAP, then the FC chain."""
    import keras

    inputs = keras.Input(tuple(input_shape), name="features")
    x = inception_block(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="inception_gap")(x)
    return keras.Model(inputs, fc_chain(x, target), name="mlsp_wide_head")


@dataclass(frozen=True)
class HeadDefinition:
    """A head architecture and its reference training schedule.

    Attributes:
        name: 'narrow' or 'wide'.
        feature_rank: rank of one sample's features (1 for GAP views, 3 for grid views).
        learning_rates: Adam learning rate of each stage.
        batch_size: reference batch size.
        build: (input_shape, target) -> uncompiled keras.Model.
    """

    name: str
    feature_rank: int
    learning_rates: tuple[float, ...]
    batch_size: int
    build: Callable[[Sequence[int], TargetDefinition], Any]


HEADS: dict[str, HeadDefinition] = {
    "narrow": HeadDefinition("narrow", 1, (1e-3, 1e-4, 1e-5), 256, build_narrow),
    "wide": HeadDefinition("wide", 3, (1e-4, 1e-5, 1e-6), 128, build_wide),
}


def _lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"--{what} {name!r}: choose from {', '.join(sorted(registry))}") from None


def head_definition(name: str) -> HeadDefinition:
    """Registered head by name.

    Raises:
        ConfigError: unknown head (the message names --head).
    """
    return _lookup(HEADS, name, "head")  # type: ignore[no-any-return]


def target_definition(name: str) -> TargetDefinition:
    """Registered target by name.

    Raises:
        ConfigError: unknown target (the message names --target).
    """
    return _lookup(TARGETS, name, "target")  # type: ignore[no-any-return]


def build_head(head: str, feature_shape: Sequence[int], target: str = "mos") -> Any:
    """Build an uncompiled head for features of one variant.

    Args:
        head: 'narrow' or 'wide'.
        feature_shape: shape of one sample's features, e.g. (16928,) or (5, 5, 16928).
        target: 'mos' or 'distribution'.

    Returns:
        keras.Model mapping [N, *feature_shape] float32 to [N, units].

    Raises:
        ConfigError: unknown head or target, or a feature rank the head cannot take.
    """
    definition = head_definition(head)
    if len(feature_shape) != definition.feature_rank:
        raise ConfigError(
            f"--head {head}: needs rank-{definition.feature_rank} features per sample, but the "
            f"view's features have shape {list(feature_shape)} (narrow heads take GAP views, "
            "wide heads take grid views)"
        )
    return definition.build(tuple(feature_shape), target_definition(target))
