"""Fixtures shared by the tests (helpers that are plain functions live in helpers.py)."""

from __future__ import annotations

import pytest
import yaml


@pytest.fixture
def write_config(tmp_path):
    """Write a config (a dict, dumped as YAML, or raw text) and return its path."""

    def write(content, name="model.yaml"):
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    return write
