"""The GPU image's pinned requirements, and the fsspec backends the README documents."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
from pathlib import Path

from fsspec.registry import known_implementations
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
IMAGE_REQUIREMENTS = ROOT / "docker/gpu/requirements.txt"


def canonical(name: str) -> str:
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(lines: list[str]) -> dict[str, str]:
    """Requirement lines (comments and blanks dropped) by canonical distribution name."""
    named = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            named[canonical(Requirement(line).name)] = line
    return named


def setup_cfg() -> configparser.ConfigParser:
    """setup.cfg, parsed."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def image_pins() -> dict[str, str]:
    """The image's requirements.txt lines by distribution name."""
    return requirement_lines(IMAGE_REQUIREMENTS.read_text().splitlines())


def pinned_version(line: str) -> str:
    """The version of a 'name[extras]==version' line."""
    (specifier,) = Requirement(line).specifier
    assert specifier.operator == "==", f"not pinned: {line}"
    return specifier.version


def documented_schemes() -> set[str]:
    """URL schemes the README quotes as `scheme://` (where stores and manifests may live)."""
    return set(re.findall(r"`([a-z][a-z0-9+.-]*)://`", (ROOT / "README.md").read_text()))


def documented_fsspec_backends() -> dict[str, str]:
    """Distribution -> module of each fsspec backend implementing a scheme the README quotes,
    as fsspec's own registry names them; schemes fsspec implements itself (memory, file)
    need no backend."""
    schemes = documented_schemes()
    unknown = schemes - set(known_implementations)
    assert not unknown, f"README quotes schemes fsspec does not know: {unknown}"
    modules = {known_implementations[scheme]["class"].split(".")[0] for scheme in schemes}
    distributions = importlib.metadata.packages_distributions()
    backends = {canonical(distributions[module][0]): module for module in modules}
    backends.pop("fsspec", None)
    return backends


def dockerfile_imports() -> set[str]:
    """Modules the image's build imports to check itself (`python -c "import a, b"`)."""
    text = (ROOT / "docker/gpu/Dockerfile").read_text()
    imported = re.findall(r'python -c "import ([\w., ]+)"', text)
    return {name.strip() for names in imported for name in names.split(",")}


def readme_extras() -> dict[str, list[Requirement]]:
    """setup.cfg extras the README tells users to install (`'.[name]'`), with their requirements."""
    named = set(re.findall(r"'\.\[([a-z0-9_-]+)\]'", (ROOT / "README.md").read_text()))
    extras = setup_cfg()["options.extras_require"]
    return {
        name: [Requirement(line) for line in requirement_lines(extras[name].splitlines()).values()]
        for name in sorted(named)
    }
