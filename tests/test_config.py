"""Configuration has one owner: only ``hpcm/config.py`` reads the environment, and the README lists
every variable it reads."""

from __future__ import annotations

import re

from hpcm import config
from hpcm.config import SOURCE_ROOT

PACKAGE_FOLDERS = ("hpcm", "models", "codec", "export", "runtime", "plugins")


def test_only_the_config_module_reads_the_environment():
    readers = []
    for folder in PACKAGE_FOLDERS:
        for path in (SOURCE_ROOT / folder).rglob("*.py"):
            if path != SOURCE_ROOT / "hpcm" / "config.py" and re.search(r"os\.environ|os\.getenv", path.read_text()):
                readers.append(str(path.relative_to(SOURCE_ROOT)))
    assert readers == [], f"read the environment through hpcm.config instead: {readers}"


def test_readme_lists_every_variable():
    readme = (SOURCE_ROOT / "README.md").read_text()
    missing = [name for name in config.ENVIRONMENT if f"| `{name}` |" not in readme]
    assert missing == [], f"add these to the README's Configuration table: {missing}"


def test_values_are_read_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCM_CACHE_DIR", str(tmp_path))
    assert config.cache_dir() == tmp_path
    assert config.engine_cache_dir() == tmp_path / "engines"
    monkeypatch.setenv("HPCM_ENGINE_CACHE", str(tmp_path / "trt"))
    assert config.engine_cache_dir() == tmp_path / "trt"
    monkeypatch.delenv("HPCM_PURE_PYTHON_RANS", raising=False)
    assert not config.pure_python_rans()
