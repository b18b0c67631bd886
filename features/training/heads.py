"""MLSP heads (narrow FC chain, wide inception block), targets, EMD loss and a streaming PLCC."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigError
from schemas.labels import AVA_BINS
from schemas.view_spec import PyramidLayout

FC_SIZES = (2048, 1024, 256)
FC_DROPOUT = (0.25, 0.25, 0.5)
INCEPTION_FILTERS = 1024
INCEPTION_SPLIT_FILTERS = 512
BN_MOMENTUM = 0.99  # Keras default, as in the reference
# Channels each spatial-pyramid bin is reduced to before the FC chain. Fed flat, irnv2_spp's
# 846,400 values would need 1.7e9 weights (7 GB) in the first 2048-unit layer; a Dense shared by
# all bins (a 1x1 conv over the bins, like the wide head's 1x1 reductions) keeps where each bin
# is while cutting channels, and 50 bins x 256 = 12,800 inputs is what SPPNet's ZF-5 fed its fc6.
PYRAMID_REDUCTION = 256


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


def fc_chain(
    inputs: Any, target: TargetDefinition, name: str = "pred", bn_momentum: float = BN_MOMENTUM
) -> Any:
    """ava-mlsp fc_layers: Dense 2048-1024-256 (ReLU, he_normal, BN, dropout), then the output.

    Args:
        inputs: a rank-2 Keras tensor.
        target: decides the output units and activation.
        name: layer-name prefix; the output layer is called exactly this.
        bn_momentum: moving-statistics momentum of the batch normalisations.

    Returns:
        The output Keras tensor.
    """
    import keras

    x = inputs
    for position, (size, rate) in enumerate(zip(FC_SIZES, FC_DROPOUT, strict=True)):
        x = keras.layers.Dense(
            size, activation="relu", kernel_initializer="he_normal", name=f"{name}_fc{position}"
        )(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn{position}")(x)
        x = keras.layers.Dropout(rate, name=f"{name}_dropout{position}")(x)
    return keras.layers.Dense(
        target.units, activation=target.activation, kernel_initializer="he_normal", name=name
    )(x)


def conv_bn(
    inputs: Any, filters: int, kernel: tuple[int, int], name: str, bn_momentum: float = BN_MOMENTUM
) -> Any:
    """Conv (no bias, same padding) + BatchNormalization(scale=False) + ReLU."""
    import keras

    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(
        inputs
    )
    x = keras.layers.BatchNormalization(scale=False, momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def inception_block(inputs: Any, name: str = "inception", bn_momentum: float = BN_MOMENTUM) -> Any:
    """Three branches on the feature grid, concatenated: 1x1; 1x1 -> (1x3, 3x1); avgpool -> 1x1.

    Returns:
        [N, rows, cols, 3072] Keras tensor.
    """
    import keras

    m = bn_momentum
    branch_1x1 = conv_bn(inputs, INCEPTION_FILTERS, (1, 1), f"{name}_b1", m)
    reduced = conv_bn(inputs, INCEPTION_FILTERS, (1, 1), f"{name}_b2", m)
    branch_1x3 = conv_bn(reduced, INCEPTION_SPLIT_FILTERS, (1, 3), f"{name}_b2a", m)
    branch_3x1 = conv_bn(reduced, INCEPTION_SPLIT_FILTERS, (3, 1), f"{name}_b2b", m)
    pooled = keras.layers.AveragePooling2D(
        (3, 3), strides=(1, 1), padding="same", name=f"{name}_pool"
    )(inputs)
    branch_pool = conv_bn(pooled, INCEPTION_FILTERS, (1, 1), f"{name}_b3", m)
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")(
        [branch_1x1, branch_1x3, branch_3x1, branch_pool]
    )


def pyramid_reduction(
    inputs: Any, layout: PyramidLayout, name: str = "pyramid", bn_momentum: float = BN_MOMENTUM
) -> Any:
    """Flat spp features -> [bins, channels] -> per-bin Dense(PYRAMID_REDUCTION) + BN -> flat.

    Returns:
        [N, bins * PYRAMID_REDUCTION] Keras tensor.
    """
    import keras

    from features.training.keras_objects import PyramidBins

    x = PyramidBins(layout.bins, layout.tap_channels, name=f"{name}_bins")(inputs)
    x = keras.layers.Dense(
        PYRAMID_REDUCTION, activation="relu", kernel_initializer="he_normal", name=f"{name}_reduce"
    )(x)  # on [N, bins, channels]: one kernel shared by every bin
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.Flatten(name=f"{name}_flatten")(x)


def build_narrow(
    input_shape: Sequence[int],
    target: TargetDefinition,
    bn_momentum: float = BN_MOMENTUM,
    layout: PyramidLayout | None = None,
) -> Any:
    """Narrow head: the FC chain on [channels] GAP features, or on the reduced bins of spp ones."""
    import keras

    inputs = keras.Input(tuple(input_shape), name="features")
    x = inputs if layout is None else pyramid_reduction(inputs, layout, bn_momentum=bn_momentum)
    return keras.Model(
        inputs, fc_chain(x, target, bn_momentum=bn_momentum), name="mlsp_narrow_head"
    )


def build_wide(
    input_shape: Sequence[int],
    target: TargetDefinition,
    bn_momentum: float = BN_MOMENTUM,
    layout: PyramidLayout | None = None,
) -> Any:
    """Wide head: inception block on the [rows, cols, channels] grid, GAP, then the FC chain.

    Grids have no pyramid: build_head passes a layout only with flat features.
    """
    import keras

    inputs = keras.Input(tuple(input_shape), name="features")
    x = inception_block(inputs, bn_momentum=bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="inception_gap")(x)
    return keras.Model(inputs, fc_chain(x, target, bn_momentum=bn_momentum), name="mlsp_wide_head")


@dataclass(frozen=True)
class HeadDefinition:
    """A head architecture and its reference training schedule.

    Attributes:
        name: 'narrow' or 'wide'.
        feature_rank: rank of one sample's features (1 for gap/spp views, 3 for grid views).
        learning_rates: Adam learning rate of each stage.
        batch_size: reference batch size.
        build: (input_shape, target, bn_momentum, pyramid layout) -> uncompiled keras.Model.
    """

    name: str
    feature_rank: int
    learning_rates: tuple[float, ...]
    batch_size: int
    build: Callable[[Sequence[int], TargetDefinition, float, PyramidLayout | None], Any]


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


def build_head(
    head: str,
    feature_shape: Sequence[int],
    target: str = "mos",
    bn_momentum: float = BN_MOMENTUM,
    layout: PyramidLayout | None = None,
) -> Any:
    """Build an uncompiled head for features of one variant.

    Args:
        head: 'narrow' or 'wide'.
        feature_shape: shape of one sample's features (FeatureViewSpec.feature_shape), e.g.
            (16928,) for gap, (846400,) for spp, (5, 5, 16928) for area:5; the wide head's
            inception block takes the grid's rows, cols and channels from it.
        target: 'mos' or 'distribution'.
        bn_momentum: batch-norm moving-statistics momentum (see bn_momentum_for).
        layout: FeatureViewSpec.pyramid_layout of an spp view (None otherwise): the narrow head
            then reduces each bin to PYRAMID_REDUCTION channels before the FC chain.

    Returns:
        keras.Model mapping [N, *feature_shape] float32 to [N, units].

    Raises:
        ConfigError: unknown head or target, a feature rank the head cannot take, or a layout
            that does not describe flat features of feature_shape.
    """
    definition = head_definition(head)
    if len(feature_shape) != definition.feature_rank:
        raise ConfigError(
            f"--head {head}: needs rank-{definition.feature_rank} features per sample, but the "
            f"view's features have shape {list(feature_shape)} (narrow heads take flat views: "
            "gap and spp pooling; wide heads take grid views: area:K pooling)"
        )
    if layout is not None and tuple(feature_shape) != (layout.size,):
        raise ConfigError(
            f"--head {head}: a pyramid of {layout.bins} bins x {layout.channels} channels gives "
            f"({layout.size},) features, but the view's features have shape {list(feature_shape)}"
        )
    return definition.build(tuple(feature_shape), target_definition(target), bn_momentum, layout)


def initialise_output_bias(model: Any, targets: Any, name: str = "pred") -> None:
    """Start the output layer at the mean training target (same architecture, faster start).

    For a linear MOS output the bias becomes the mean score; for a softmax distribution it
    becomes the log of the mean distribution. With AVA-sized data this changes little; with a
    few hundred samples it saves the thousands of steps the bias would need to reach ~5.5.

    Args:
        model: a head built by build_head.
        targets: [N, units] training targets.
        name: the output layer's name.
    """
    import numpy as np

    layer = model.get_layer(name)
    mean = np.asarray(targets, dtype=np.float64).mean(axis=0)
    if layer.activation.__name__ == "softmax":
        mean = np.log(np.clip(mean, 1e-6, None))
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, mean.astype(bias.dtype).reshape(bias.shape)])


def bn_momentum_for(steps_per_epoch: int) -> float:
    """Batch-norm momentum whose moving average spans about one epoch, at most the reference 0.99.

    On AVA (about 1000 steps per epoch) this is the reference 0.99. On a few hundred images
    (a handful of steps per epoch) 0.99 would leave the inference statistics near their
    initial values for the whole run, so validation and test outputs would be meaningless.
    """
    return min(BN_MOMENTUM, max(0.5, 1.0 - 1.0 / max(1, steps_per_epoch)))
