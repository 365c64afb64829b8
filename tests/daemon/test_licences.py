"""refscope is MIT: no GPL-licensed package may be among the distributions its install requirements pull in.

The check walks the installed distribution metadata from refscope's own requirements (the ``vendor`` extra and the
ONNX Runtime build included, as ``make test`` installs ``.[dev]``; the test tools themselves are not shipped and
are left out), recursively, and reads each one's ``License-Expression``, ``License`` and ``Classifier: License ::``
fields. A package whose licence says GPL (not LGPL) fails the test, naming it and the path that pulled it in --
e.g. rosettasciio, HyperSpy or ncempy, whose readers refscope must not use.
"""
from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement

SHIPPED_EXTRAS = ("vendor", "cpu")
"""Extras whose requirements are part of what a user installs (dev's test tools are not)."""
_GPL = re.compile(r"(?<!L)GPL|GNU General Public License|GNU Affero", re.IGNORECASE)
_LGPL = re.compile(r"LGPL|Lesser General Public|Library General Public", re.IGNORECASE)


def _licence_texts(dist: metadata.Distribution) -> list[str]:
    meta = dist.metadata
    texts = [meta.get("License-Expression") or "", (meta.get("License") or "")[:300]]
    texts += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return [t for t in texts if t]


def is_gpl(texts: list[str]) -> bool:
    """True when a licence text says GPL/AGPL (LGPL is not GPL: linking is allowed)."""
    return any(_GPL.search(_LGPL.sub("", text)) for text in texts)


def _requirements(dist: metadata.Distribution, extras: tuple[str, ...]) -> list[Requirement]:
    found = []
    for text in dist.requires or []:
        requirement = Requirement(text)  # kept when unconditional, or its marker holds here for one wanted extra
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras)):
            found.append(requirement)
    return found


def installed_closure(root: str = "refscope", extras: tuple[str, ...] = SHIPPED_EXTRAS) -> dict[str, list[str]]:
    """Every installed distribution ``root[extras]`` requires, directly or not: name -> the chain that pulled it in."""
    chains: dict[str, list[str]] = {}
    todo: list[tuple[str, tuple[str, ...], list[str]]] = [(root, extras, [])]
    while todo:
        name, wanted, chain = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement of another platform or build, not installed here
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in chains and not wanted:
            continue
        chains.setdefault(key, chain + [key])
        for requirement in _requirements(dist, wanted):
            if requirement.name.lower().replace("_", "-") == "refscope":
                todo.append(("refscope", tuple(requirement.extras), chains[key]))
            elif requirement.name.lower().replace("_", "-") not in chains:
                todo.append((requirement.name, tuple(requirement.extras), chains[key]))
    return chains


def test_the_licence_check_knows_gpl_from_lgpl_and_permissive_licences() -> None:
    assert is_gpl(["GPL-3.0-or-later"]) and is_gpl(["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"])
    assert is_gpl(["AGPL-3.0"])
    assert not is_gpl(["LGPL-2.1"]) and not is_gpl(["License :: OSI Approved :: GNU Lesser General Public License v3"])
    assert not is_gpl(["MIT", "BSD-3-Clause", "Apache-2.0", "License :: OSI Approved :: BSD License"])


def test_no_gpl_licensed_package_is_among_the_installed_dependencies() -> None:
    closure = installed_closure()
    assert {"numpy", "tifffile", "h5py", "mrcfile", "nionswift-io"} <= set(closure), sorted(closure)
    offenders = {name: (" -> ".join(chain), _licence_texts(metadata.distribution(name)))
                 for name, chain in closure.items() if name != "refscope"
                 and is_gpl(_licence_texts(metadata.distribution(name)))}
    assert not offenders, f"GPL-licensed dependencies of MIT refscope: {offenders}"


BENCHMARK_ONLY = {"tk-r-em", "tensorflow", "tensorflow-cpu", "bm3d"}
"""Peers of ``benchmarks/quality.py`` that live only in their own environments under ``benchmarks/peers/`` (tk-r-em:
GPL-3 and TensorFlow; bm3d: non-commercial licence) and must never be pulled in by refscope."""


def test_the_benchmark_only_peers_are_not_dependencies() -> None:
    assert not BENCHMARK_ONLY & set(installed_closure()), sorted(BENCHMARK_ONLY & set(installed_closure()))


@pytest.mark.parametrize("name", ["h5py", "mrcfile", "nionswift-io", "niondata", "nionutils"])
def test_the_vendor_readers_are_permissively_licensed(name: str) -> None:
    texts = " ".join(_licence_texts(metadata.distribution(name)))
    assert re.search(r"BSD|Apache|MIT", texts), (name, texts)


def test_refscope_ships_its_own_mit_licence_as_an_spdx_expression() -> None:
    """An MIT product carries the licence text, and declares it the way setuptools >= 77 requires (the TOML-table
    form is refused by setuptools from 2027-02-18 on)."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (root / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
