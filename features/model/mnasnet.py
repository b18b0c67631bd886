"""MnasNet-A1 (Tan et al., CVPR 2019, fig. 7a) as a Keras functional model with stable layer names.

Follows the TensorFlow reference (tensorflow/tpu models/official/mnasnet, mnasnet_a1): blocks
'r1_k3_s11_e1_i32_o16_noskip', 'r2_k3_s22_e6_i16_o24', 'r3_k5_s22_e3_i24_o40_se0.25',
'r4_k3_s22_e6_i40_o80', 'r2_k3_s11_e6_i80_o112_se0.25', 'r3_k5_s22_e6_i112_o160_se0.25',
'r1_k3_s11_e6_i160_o320'; batch norm momentum 0.99, epsilon 1e-3; ReLU throughout; 'same'
padding; squeeze-excite width max(1, int(block input filters * 0.25)); residual add when the
stride is 1 and input and output filters match. Head: 1x1 conv 1280 + BN + ReLU (then GAP,
dropout 0.2 and a 1000-way dense layer in the classifier, 3.9M parameters at 224x224).

Every layer is named explicitly (no Keras auto-numbering), so tap names and weights files do not
depend on what else the process built. Block outputs are Identity layers 'block{i}_out'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class BlockArgs:
    """One MBConv block: filters in and out, kernel, stride, expansion, SE ratio, skip allowed."""

    in_filters: int
    out_filters: int
    kernel: int
    stride: int
    expand: int
    se_ratio: float | None
    id_skip: bool


# (repeats, kernel, stride, expand ratio, output filters, SE ratio, id_skip) per stage.
MNASNET_A1_STAGES: tuple[tuple[int, int, int, int, int, float | None, bool], ...] = (
    (1, 3, 1, 1, 16, None, False),  # SepConv k3x3, 16
    (2, 3, 2, 6, 24, None, True),  # MBConv6 k3x3 x2, 24
    (3, 5, 2, 3, 40, 0.25, True),  # MBConv3 k5x5 SE x3, 40
    (4, 3, 2, 6, 80, None, True),  # MBConv6 k3x3 x4, 80
    (2, 3, 1, 6, 112, 0.25, True),  # MBConv6 k3x3 SE x2, 112
    (3, 5, 2, 6, 160, 0.25, True),  # MBConv6 k5x5 SE x3, 160
    (1, 3, 1, 6, 320, None, True),  # MBConv6 k3x3 x1, 320
)


def block_args() -> list[BlockArgs]:
    """The 16 blocks of MnasNet-A1, stages flattened (the first block of a stage strides)."""
    blocks = []
    in_filters = STEM_FILTERS
    for repeats, kernel, stride, expand, out_filters, se_ratio, id_skip in MNASNET_A1_STAGES:
        for repeat in range(repeats):
            first_stride = stride if repeat == 0 else 1
            blocks.append(
                BlockArgs(in_filters, out_filters, kernel, first_stride, expand, se_ratio, id_skip)
            )
            in_filters = out_filters
    return blocks


def _batch_norm(name: str) -> Any:
    import keras

    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _squeeze_excite(x: Any, args: BlockArgs, filters: int, prefix: str) -> Any:
    from keras import layers

    assert args.se_ratio is not None
    reduced = max(1, int(args.in_filters * args.se_ratio))
    s = layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "se_squeeze")(x)
    s = layers.Conv2D(reduced, 1, padding="same", name=prefix + "se_reduce")(s)
    s = layers.ReLU(name=prefix + "se_relu")(s)
    s = layers.Conv2D(filters, 1, padding="same", name=prefix + "se_expand")(s)
    s = layers.Activation("sigmoid", name=prefix + "se_sigmoid")(s)
    return layers.Multiply(name=prefix + "se_excite")([x, s])


def _mbconv(x: Any, index: int, args: BlockArgs) -> Any:
    from keras import layers

    prefix = f"block{index}_"
    inputs = x
    filters = args.in_filters * args.expand
    if args.expand != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(
            x
        )
        x = layers.ReLU(name=prefix + "expand_relu")(_batch_norm(prefix + "expand_bn")(x))
    x = layers.DepthwiseConv2D(
        args.kernel, strides=args.stride, padding="same", use_bias=False, name=prefix + "dwconv"
    )(x)
    x = layers.ReLU(name=prefix + "dw_relu")(_batch_norm(prefix + "dw_bn")(x))
    if args.se_ratio:
        x = _squeeze_excite(x, args, filters, prefix)
    x = layers.Conv2D(
        args.out_filters, 1, padding="same", use_bias=False, name=prefix + "project_conv"
    )(x)
    x = _batch_norm(prefix + "project_bn")(x)
    if args.id_skip and args.stride == 1 and args.in_filters == args.out_filters:
        x = layers.Add(name=prefix + "add")([x, inputs])
    return layers.Identity(name=prefix + "out")(x)


def build_mnasnet_a1(
    include_top: bool = False,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    classes: int = 1000,
    dropout_rate: float = 0.2,
) -> Any:
    """MnasNet-A1 on preprocessed float images (ImageNet mean/std normalisation).

    Args:
        include_top: add GAP, dropout and the classifier (for the parameter-count check).
        input_shape: image shape; None sides accept any size.
        classes: classifier units.
        dropout_rate: dropout before the classifier.

    Returns:
        keras.Model named 'mnasnet_a1'; without top its output is 'head_relu'.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = layers.ReLU(name="stem_relu")(_batch_norm("stem_bn")(x))
    for index, args in enumerate(block_args()):
        x = _mbconv(x, index, args)
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = layers.ReLU(name="head_relu")(_batch_norm("head_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="dropout")(x)
        x = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, x, name="mnasnet_a1")
