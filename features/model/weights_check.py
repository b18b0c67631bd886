"""Find the first layer whose weights in an .h5 file do not fit a model (Keras may only warn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _layer_variables(layer: Any) -> list[Any]:
    """Variables in the order Keras saves them (trainable, then non-trainable)."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _shapes(variables: Any) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in variable.shape) for variable in variables]


def _keras3_mismatch(model: Any, handle: Any) -> str | None:
    """Keras 3 .weights.h5: layers/<snake_case class name[_N]>/vars/<i>, in model.layers order."""
    from keras.src.utils.naming import to_snake_case

    used: dict[str, int] = {}
    for layer in model.layers:
        base = to_snake_case(layer.__class__.__name__)
        used[base] = used.get(base, -1) + 1
        group = base if used[base] == 0 else f"{base}_{used[base]}"
        expected = _shapes(_layer_variables(layer))
        if not expected:
            continue
        stored = handle.get(f"layers/{group}/vars")
        found = [] if stored is None else [tuple(stored[str(i)].shape) for i in range(len(stored))]
        if found != expected:
            return f"layer {layer.name!r} expects {expected}, file 'layers/{group}' has {found}"
    return None


def _legacy_mismatch(model: Any, handle: Any) -> str | None:
    """Keras 2 HDF5 weights: loaded by order of the layers that have weights."""
    root = handle.get("model_weights", handle)
    stored = []
    for name in root.attrs.get("layer_names", []):
        name = name.decode() if isinstance(name, bytes) else name
        weight_names = root[name].attrs.get("weight_names", [])
        shapes = [
            tuple(root[name][w.decode() if isinstance(w, bytes) else w].shape) for w in weight_names
        ]
        if shapes:
            stored.append((name, shapes))
    layers = [layer for layer in model.layers if layer.weights]
    for position, layer in enumerate(layers):
        expected = _shapes(layer.weights)
        if position >= len(stored):
            return (
                f"layer {layer.name!r} expects {expected}, the file has only {len(stored)} layers"
            )
        name, shapes = stored[position]
        if shapes != expected:
            return f"layer {layer.name!r} expects {expected}, file layer {name!r} has {shapes}"
    if len(stored) > len(layers):
        return f"the file has {len(stored)} layers with weights, the model {len(layers)}"
    return None


def first_mismatch(model: Any, path: Path) -> str | None:
    """Describe the first layer of model whose weights in path have other shapes (None: all fit).

    Raises:
        OSError: the file is not readable HDF5.
    """
    import h5py

    with h5py.File(path, "r") as handle:
        if "layers" in handle:
            return _keras3_mismatch(model, handle)
        return _legacy_mismatch(model, handle)
