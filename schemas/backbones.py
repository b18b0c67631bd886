"""Declared facts of each backbone: tap layers with channel counts, minimum input side, map sides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The final 1x1 conv activation of the Keras MobileNetV3 models is auto-numbered
# ("activation_19", "activation_37", ... depending on what the process built before), so the tap
# is named by this alias and resolved to the backbone's output.
MOBILENET_V3_FINAL_TAP = "conv_1_act"


@dataclass(frozen=True)
class BackboneFacts:
    """What a view spec needs to know about a backbone (no Keras here).

    Attributes:
        name: registry and CLI name ('inception_v3').
        spec_name: value of FeatureViewSpec.backbone ('InceptionV3').
        taps: (layer name, channels) of every tap, in model order (the documented MLSP order).
        min_input_side: smallest image side the network takes (smaller gives empty or garbage maps).
        last_map_side: side of the smallest (last) tap map for an image side >= min_input_side.
    """

    name: str
    spec_name: str
    taps: tuple[tuple[str, int], ...]
    min_input_side: int
    last_map_side: Callable[[int], int]

    @property
    def tap_channels(self) -> dict[str, int]:
        """Tap name -> channels."""
        return dict(self.taps)

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Tap names in model order."""
        return tuple(name for name, _ in self.taps)

    def min_side_for_map(self, map_side: int) -> int:
        """Smallest image side whose every tap map has at least map_side cells per side."""
        side = self.min_input_side
        while self.last_map_side(side) < map_side:
            side += 1
        return side


def _inception_resnet_v2_taps() -> tuple[tuple[str, int], ...]:
    """Names and channel counts of every layer whose name contains 'mixed', in model order."""
    taps = [("mixed_5b", 320)]
    taps += [(f"block35_{index}_mixed", 128) for index in range(1, 11)]
    taps += [("mixed_6a", 1088)]
    taps += [(f"block17_{index}_mixed", 384) for index in range(1, 21)]
    taps += [("mixed_7a", 2080)]
    taps += [(f"block8_{index}_mixed", 448) for index in range(1, 11)]
    return tuple(taps)


INCEPTION_RESNET_V2_TAPS = _inception_resnet_v2_taps()  # 43 taps, 16928 channels
# kutils (ava-mlsp): model.get_layer('mixed%d' % i) for i in range(11); exact names, because
# Keras' InceptionV3 also has mixed9_0 and mixed9_1 inside the last two blocks.
INCEPTION_V3_TAPS = tuple(
    (f"mixed{index}", channels)
    for index, channels in enumerate((256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048))
)  # 11 taps, 10048 channels
# Every inverted-residual block output (its '_add' when the block is residual, else its
# '_project_bn'), then the final 1x1 conv activation: the MobileNetV3 analogue of MLSP's "every
# Inception block", covering every resolution and depth rather than only stage ends.
MOBILENET_V3_LARGE_TAPS = (
    ("expanded_conv_add", 16),
    ("expanded_conv_1_project_bn", 24),
    ("expanded_conv_2_add", 24),
    ("expanded_conv_3_project_bn", 40),
    ("expanded_conv_4_add", 40),
    ("expanded_conv_5_add", 40),
    ("expanded_conv_6_project_bn", 80),
    ("expanded_conv_7_add", 80),
    ("expanded_conv_8_add", 80),
    ("expanded_conv_9_add", 80),
    ("expanded_conv_10_project_bn", 112),
    ("expanded_conv_11_add", 112),
    ("expanded_conv_12_project_bn", 160),
    ("expanded_conv_13_add", 160),
    ("expanded_conv_14_add", 160),
    (MOBILENET_V3_FINAL_TAP, 960),
)  # 16 taps, 2168 channels
MOBILENET_V3_SMALL_TAPS = (
    ("expanded_conv_project_bn", 16),
    ("expanded_conv_1_project_bn", 24),
    ("expanded_conv_2_add", 24),
    ("expanded_conv_3_project_bn", 40),
    ("expanded_conv_4_add", 40),
    ("expanded_conv_5_add", 40),
    ("expanded_conv_6_project_bn", 48),
    ("expanded_conv_7_add", 48),
    ("expanded_conv_8_project_bn", 96),
    ("expanded_conv_9_add", 96),
    ("expanded_conv_10_add", 96),
    (MOBILENET_V3_FINAL_TAP, 576),
)  # 12 taps, 1144 channels
# Every MBConv block output plus the 1280-channel head activation (same rule as MobileNetV3).
MNASNET_A1_TAPS = (
    *(
        (f"block{index}_out", channels)
        for index, channels in enumerate(
            (16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160, 320)
        )
    ),
    ("head_relu", 1280),
)  # 17 taps, 2808 channels


def _inception_last_side(side: int) -> int:
    """VALID stem and reductions: the 8x8-at-299 maps have floor((side - 43) / 32) cells."""
    return (side - 43) // 32


def _mobilenet_v3_last_side(side: int) -> int:
    """None input dims: the 'same' stem gives ceil(s / 2), the four padded VALID reductions halve
    (floor) that, so floor((s + 1) / 32)."""
    return (side + 1) // 32


def _mnasnet_last_side(side: int) -> int:
    """'same' padding: ceil(side / 32)."""
    return -(-side // 32)


BACKBONE_FACTS: dict[str, BackboneFacts] = {
    facts.name: facts
    for facts in (
        BackboneFacts(
            "inception_resnet_v2",
            "InceptionResNetV2",
            INCEPTION_RESNET_V2_TAPS,
            75,
            _inception_last_side,
        ),
        BackboneFacts("inception_v3", "InceptionV3", INCEPTION_V3_TAPS, 75, _inception_last_side),
        BackboneFacts(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            MOBILENET_V3_LARGE_TAPS,
            31,  # at <= 30 px the last maps are empty and Keras silently returns garbage
            _mobilenet_v3_last_side,
        ),
        BackboneFacts(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            MOBILENET_V3_SMALL_TAPS,
            31,
            _mobilenet_v3_last_side,
        ),
        BackboneFacts(
            "mnasnet_a1",
            "MnasNetA1",
            MNASNET_A1_TAPS,
            32,  # 'same' padding works at any size; 32 px is one cell of the stride-32 head
            _mnasnet_last_side,
        ),
    )
}
FACTS_BY_SPEC_NAME: dict[str, BackboneFacts] = {f.spec_name: f for f in BACKBONE_FACTS.values()}
