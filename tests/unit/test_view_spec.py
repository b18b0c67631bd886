"""View spec: tap arithmetic, validation errors that name the field, JSON round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import ConfigError
from schemas.view_spec import (
    INCEPTION_RESNET_V2_TAPS,
    PREDEFINED_VIEWS,
    FeatureViewSpec,
    InputPolicy,
    PoolingSpec,
)


def test_predefined_views_have_reference_shapes() -> None:
    assert len(INCEPTION_RESNET_V2_TAPS) == 43
    assert PREDEFINED_VIEWS["irnv2_mlsp_narrow"].feature_shape == (16928,)
    assert PREDEFINED_VIEWS["irnv2_mlsp_wide"].feature_shape == (5, 5, 16928)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"storage_dtype": "int8"}, "storage_dtype"),
        ({"taps": ("mixed_5b", "nope")}, "taps"),
        ({"variants": ()}, "variants"),
        ({"name": "bad name!"}, "name"),
        ({"weights_sha256": "abc"}, "weights_sha256"),
        ({"backbone": "ResNet50"}, "backbone"),
    ],
)
def test_invalid_fields_are_named(kwargs, field_name) -> None:
    with pytest.raises(ConfigError, match=f"'{field_name}'"):
        FeatureViewSpec(name=kwargs.pop("name", "v"), **kwargs)


def test_nested_validation_names_field() -> None:
    with pytest.raises(ConfigError, match=r"pooling\.grid"):
        PoolingSpec("grid", (0, 5))
    with pytest.raises(ConfigError, match=r"input_policy\.max_side"):
        InputPolicy("max_side", 40)
    with pytest.raises(ConfigError, match="unknown field"):
        FeatureViewSpec.from_dict({"name": "v", "colour": "red"})


tap_names = [name for name, _ in INCEPTION_RESNET_V2_TAPS]
specs = st.builds(
    FeatureViewSpec,
    name=st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
    pooling=st.one_of(
        st.just(PoolingSpec("gap")),
        st.tuples(st.integers(1, 9), st.integers(1, 9)).map(lambda g: PoolingSpec("grid", g)),
    ),
    taps=st.lists(st.sampled_from(tap_names), min_size=1, max_size=6, unique=True).map(tuple),
    input_policy=st.one_of(
        st.just(InputPolicy()), st.integers(75, 4000).map(lambda m: InputPolicy("max_side", m))
    ),
    variants=st.lists(
        st.sampled_from(["orig", "0_0_0", "1_1_1", "0.5_0.5_0"]), min_size=1, unique=True
    ).map(tuple),
    storage_dtype=st.sampled_from(["float16", "float32"]),
    weights_id=st.sampled_from(["imagenet", "random:3", "/w/x.weights.h5"]),
    weights_sha256=st.sampled_from(["", "a" * 64]),
)


@given(specs)
def test_json_round_trip(spec: FeatureViewSpec) -> None:
    again = FeatureViewSpec.from_json(spec.to_json())
    assert again == spec
    assert again.identity_sha256() == spec.identity_sha256()
    assert again.feature_shape == spec.feature_shape


def test_identity_ignores_package_version_but_not_weights() -> None:
    spec = PREDEFINED_VIEWS["irnv2_mlsp_narrow"]
    from dataclasses import replace

    assert replace(spec, package_version="9.9").identity_sha256() == spec.identity_sha256()
    assert spec.differences(spec.with_weights("random:1", "")) == ["weights_id"]
