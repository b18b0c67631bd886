"""Backbone facts, pooling kinds and custom views: specs, shapes, minimums and errors (no Keras)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from schemas.backbones import BACKBONE_FACTS
from schemas.errors import ConfigError
from schemas.view_spec import PREDEFINED_VIEWS, FeatureViewSpec, InputPolicy, PoolingSpec
from schemas.view_syntax import parse_pooling, parse_view_spec, pooling_text

# Computed from the code before backbones and spp existed (commit 2e3f451): sha256 of to_json()
# and identity_sha256(), for the predefined spec and for one with every field changed.
PINNED_IRNV2 = {
    "irnv2_mlsp_narrow": (
        "d831a2272f9272ae981a1c39f9ef92fe89f4b09e3e9a2b0665f55e6021e9a5cb",
        "0bf8055e3d231db8bebacc8a852b1aa531d8a143a01f83beeead8c6b52d23fcf",
        "f53293cafa7c6a039bdd4d55543533dd37352abb6f563f3e0c20e2b7070868da",
    ),
    "irnv2_mlsp_wide": (
        "1b38ba22f54d4375a76fab2993b3f695a5836e0e2ebd3248e7bde50b97b1ccbf",
        "a4e1d0f25f9e5f349c1a592f65342a1046c483e8f846b32d4e487c4fc4bc56dc",
        "e09bb699a747fb61224b75f8a9b1d3f8cb8d1055ac3aba3f46a244a5e82cf7e0",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED_IRNV2))
def test_irnv2_specs_are_byte_identical_to_before(name) -> None:
    json_sha, identity, changed_identity = PINNED_IRNV2[name]
    spec = PREDEFINED_VIEWS[name]
    assert hashlib.sha256(spec.to_json().encode()).hexdigest() == json_sha
    assert spec.identity_sha256() == identity
    changed = replace(
        spec,
        input_policy=InputPolicy(kind="max_side", max_side=300),
        variants=("0_0_0", "1_1_1"),
        weights_id="random:0",
        weights_sha256="a" * 64,
        compute_dtype="mixed_float16",
    )
    assert changed.identity_sha256() == changed_identity
    assert "levels" not in spec.to_json()
    assert FeatureViewSpec.from_json(spec.to_json()).identity_sha256() == identity


@pytest.mark.parametrize(
    ("view", "backbone", "taps", "shape", "min_side", "head"),
    [
        ("iv3_mlsp_narrow", "inception_v3", 11, (10048,), 75, "narrow"),
        ("iv3_mlsp_wide", "inception_v3", 11, (5, 5, 10048), 75, "wide"),
        ("irnv2_spp", "inception_resnet_v2", 43, (50 * 16928,), 235, "narrow"),
        ("mnv3l_mlsp_narrow", "mobilenet_v3_large", 16, (2168,), 31, "narrow"),
        ("mnv3s_mlsp_narrow", "mobilenet_v3_small", 12, (1144,), 31, "narrow"),
        ("mnasnet_mlsp_narrow", "mnasnet_a1", 17, (2808,), 32, "narrow"),
    ],
)
def test_new_predefined_views(view, backbone, taps, shape, min_side, head) -> None:
    spec = PREDEFINED_VIEWS[view]
    assert spec.backbone_name == backbone and len(spec.taps) == taps
    assert spec.feature_shape == shape and spec.head == head
    assert spec.input_policy.min_side == min_side
    again = FeatureViewSpec.from_json(spec.to_json())
    assert again == spec and again.identity_sha256() == spec.identity_sha256()


def _brute_force_minimum(name: str, map_side: int) -> int:
    facts = BACKBONE_FACTS[name]
    return next(
        side
        for side in range(1, 2000)
        if side >= facts.min_input_side and facts.last_map_side(side) >= map_side
    )


@pytest.mark.parametrize(
    ("backbone", "spp_minimum"),
    [
        ("inception_resnet_v2", 235),
        ("inception_v3", 235),
        ("mobilenet_v3_large", 191),
        ("mobilenet_v3_small", 191),
        ("mnasnet_a1", 161),
    ],
)
def test_spp_minimum_side_gives_every_bin_a_cell(backbone, spp_minimum) -> None:
    spec = parse_view_spec(f"backbone={backbone},pooling=spp:1,2,3,6,name=v")
    assert spec.input_policy.min_side == spp_minimum == _brute_force_minimum(backbone, 6)
    with pytest.raises(ConfigError, match=rf"'input_policy.min_side'.*at least {spp_minimum} px"):
        replace(spec, input_policy=InputPolicy(min_side=spp_minimum - 1))


def test_view_spec_text_with_taps_and_commas_in_values() -> None:
    spec = parse_view_spec("name=mine,backbone=inception_v3,pooling=spp:1,3,taps=mixed0,mixed10")
    assert spec.backbone == "InceptionV3" and spec.taps == ("mixed0", "mixed10")
    assert spec.pooling == PoolingSpec("spp", levels=(1, 3))
    assert spec.feature_shape == ((1 + 9) * (256 + 2048),)
    assert spec.input_policy.min_side == 43 + 3 * 32


@pytest.mark.parametrize("text", ["gap", "area:5", "area:3x7", "spp:1,2,3,6", "spp:4"])
def test_pooling_text_round_trips(text) -> None:
    assert pooling_text(parse_pooling(text)) == text


@pytest.mark.parametrize(
    ("text", "field", "choices"),
    [
        ("backbone=resnet50,pooling=gap,name=v", "backbone", "mobilenet_v3_large"),
        ("backbone=inception_v3,pooling=max,name=v", "pooling", "spp:LEVELS"),
        ("backbone=inception_v3,pooling=spp:1,two,name=v", "pooling", "spp:LEVELS"),
        ("backbone=inception_v3,pooling=spp:0,name=v", "pooling", "positive"),
        ("backbone=inception_v3,pooling=spp:2,2,name=v", "pooling", "repeat"),
        ("backbone=inception_v3,pooling=area:5x5x5,name=v", "pooling", "ROWSxCOLS"),
        ("backbone=inception_v3,pooling=gap,name=v,taps=mixed9_0", "taps", "mixed10"),
        ("backbone=inception_v3,pooling=gap,name=v,colour=red", "colour", "taps"),
        ("backbone=inception_v3,pooling=gap", "name", "backbone"),
        ("backbone=inception_v3,pooling=gap,name=bad name", "name", "letters"),
    ],
)
def test_bad_view_specs_name_the_field_and_the_choices(text, field, choices) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'") as error:
        parse_view_spec(text)
    assert choices in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "spp"}, "pooling.levels"),
        ({"kind": "spp", "levels": ()}, "pooling.levels"),
        ({"kind": "spp", "levels": (1, 1)}, "pooling.levels"),
        ({"kind": "gap", "levels": (1,)}, "pooling.levels"),
        ({"kind": "avg"}, "pooling.kind"),
    ],
)
def test_pooling_spec_validation_names_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        PoolingSpec(**kwargs)


def test_spec_rejects_taps_of_another_backbone() -> None:
    with pytest.raises(ConfigError, match=r"'taps'.*MobileNetV3Small has no layer"):
        FeatureViewSpec(name="v", backbone="MobileNetV3Small", taps=("mixed_5b",))
    with pytest.raises(ConfigError, match=r"'backbone'.*choose from"):
        FeatureViewSpec(name="v", backbone="ResNet50")
