"""Backbone registry: how each network is built, preprocessed, tapped and which weights it takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from features.model.weights import IMAGENET_WEIGHTS, WeightsSource
from schemas.backbones import BACKBONE_FACTS, MOBILENET_V3_FINAL_TAP, BackboneFacts
from schemas.errors import ConfigError

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def inception_scaling(images: Any) -> Any:
    """uint8 or float RGB -> x / 127.5 - 1 (Inception, and MobileNetV3's built-in Rescaling)."""
    from keras import ops

    return ops.cast(images, "float32") / 127.5 - 1.0


def imagenet_standardisation(images: Any) -> Any:
    """uint8 or float RGB -> (x - ImageNet mean) / ImageNet std (the MnasNet reference's input)."""
    from keras import ops

    mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, "float32")
    std = ops.convert_to_tensor(IMAGENET_STD_RGB, "float32")
    return (ops.cast(images, "float32") - mean) / std


PREPROCESSING: dict[str, Callable[[Any], Any]] = {
    "inception": inception_scaling,
    "imagenet_mean_std": imagenet_standardisation,
}


def _inception_resnet_v2() -> Any:
    import keras

    return keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )


def _inception_v3() -> Any:
    import keras

    return keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )


def _mobilenet_v3(large: bool) -> Callable[[], Any]:
    def build() -> Any:
        import keras

        constructor = (
            keras.applications.MobileNetV3Large if large else keras.applications.MobileNetV3Small
        )
        # Preprocessing happens in our graph (x / 127.5 - 1 equals Keras' built-in Rescaling).
        return constructor(
            include_top=False,
            weights=None,
            input_shape=(None, None, 3),
            include_preprocessing=False,
        )

    return build


def _mnasnet_a1() -> Any:
    from features.model.mnasnet import build_mnasnet_a1

    return build_mnasnet_a1(include_top=False)


@dataclass(frozen=True)
class Backbone:
    """A registered backbone.

    Attributes:
        facts: declared taps, channels and minimum input side (schemas.backbones).
        build: () -> keras.Model without top, input (None, None, 3), weights uninitialised.
        preprocessing: key of PREPROCESSING applied to uint8 RGB inside the graph.
        weights_kinds: accepted --weights kinds ('imagenet', 'file', 'random').
        output_alias: tap name that means the backbone's output (unstable auto-numbered layer).
        no_imagenet: why 'imagenet' is refused and what to pass instead (when it is).
    """

    facts: BackboneFacts
    build: Callable[[], Any]
    preprocessing: str = "inception"
    weights_kinds: tuple[str, ...] = ("imagenet", "file", "random")
    output_alias: str = ""
    no_imagenet: str = ""

    @property
    def name(self) -> str:
        """Registry name."""
        return self.facts.name

    def tap_outputs(self, model: Any, taps: Sequence[str]) -> list[Any]:
        """Symbolic outputs of the named taps of a model built by build()."""
        return [
            model.output if tap == self.output_alias else model.get_layer(tap).output
            for tap in taps
        ]

    def check_weights(self, source: WeightsSource) -> None:
        """Refuse weights kinds this backbone cannot take.

        Raises:
            ConfigError: the kind is not accepted (the message says what to pass instead).
        """
        if source.kind not in self.weights_kinds:
            raise ConfigError(
                f"--weights {source.weights_id!r}: {self.name} accepts "
                f"{', '.join(self.weights_kinds)}. {self.no_imagenet}".strip()
            )


_MNASNET_NO_IMAGENET = (
    "No Keras ImageNet weights exist for MnasNet-A1. Convert a checkpoint (e.g. the TensorFlow "
    "TPU reference's or torchvision's mnasnet1_0) into a Keras .weights.h5 for the model of "
    "features.model.mnasnet.build_mnasnet_a1 (same layer names), then pass --weights PATH; or "
    "use --weights random:SEED."
)

BACKBONES: dict[str, Backbone] = {
    entry.name: entry
    for entry in (
        Backbone(BACKBONE_FACTS["inception_resnet_v2"], _inception_resnet_v2),
        Backbone(BACKBONE_FACTS["inception_v3"], _inception_v3),
        Backbone(
            BACKBONE_FACTS["mobilenet_v3_large"],
            _mobilenet_v3(large=True),
            output_alias=MOBILENET_V3_FINAL_TAP,
        ),
        Backbone(
            BACKBONE_FACTS["mobilenet_v3_small"],
            _mobilenet_v3(large=False),
            output_alias=MOBILENET_V3_FINAL_TAP,
        ),
        Backbone(
            BACKBONE_FACTS["mnasnet_a1"],
            _mnasnet_a1,
            preprocessing="imagenet_mean_std",
            weights_kinds=("file", "random"),
            no_imagenet=_MNASNET_NO_IMAGENET,
        ),
    )
}
assert all(
    (name in IMAGENET_WEIGHTS) == ("imagenet" in entry.weights_kinds)
    for name, entry in BACKBONES.items()
)


def backbone_entry(name: str) -> Backbone:
    """Registered backbone by registry name ('inception_v3') or spec name ('InceptionV3').

    Raises:
        ConfigError: unknown backbone (names the choices).
    """
    for entry in BACKBONES.values():
        if name in (entry.name, entry.facts.spec_name):
            return entry
    raise ConfigError(f"backbone {name!r}: choose from {', '.join(BACKBONES)}")
