"""The import graph of plugin/ goes down the layers only and has no cycle (scripts/layers.py
holds the layers; issue 21). The checker itself is shown to find an upward edge and a cycle."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layers():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "scripts" / "layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_goes_up_the_layers_and_none_is_a_cycle():
    assert _layers().problems(str(ROOT)) == []


def test_the_checker_finds_an_upward_edge_and_a_cycle(tmp_path):
    layers = _layers()
    shutil.copytree(ROOT / "plugin", tmp_path / "plugin", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "plugin" / "store" / "codec.py", "a") as f:
        f.write("\nfrom ..driver import networks  # noqa\n")  # store would import the driver
    with open(tmp_path / "plugin" / "domain" / "naming.py", "a") as f:
        f.write("\nfrom . import model  # noqa\n")
    with open(tmp_path / "plugin" / "domain" / "model.py", "a") as f:
        f.write("\nfrom . import naming  # noqa\n")  # a cycle inside a package
    found = layers.problems(str(tmp_path))
    assert any(p.startswith("plugin.store.codec -> plugin.driver.networks: up the layers") for p in found), found
    assert any(p.startswith("cycle:") and "plugin.domain.model" in p and "plugin.domain.naming" in p for p in found), (
        found
    )
    assert os.path.exists(tmp_path / "plugin" / "wiring.py")
