"""The examples run top to bottom as a user would run them, and write what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(("script", "folder", "files"), [
    ("quickstart.py", "quickstart_out", {"cls.png", "layers.png", "rollout.png", "query.png"}),
    ("keras_attention.py", "keras_out", {"rollout.png", "cls_heads.png", "scores.npz"}),
])
def test_example_runs_and_writes_its_figures(tmp_path, monkeypatch, tmp_path_factory, script, folder, files):
    pytest.importorskip("onnx")
    pytest.importorskip("skimage")
    env = {"VITPROBE_CACHE": str(tmp_path_factory.getbasetemp() / "cache"), "PATH": "/usr/bin:/bin",
           "VITPROBE_KERNEL_CACHE": os.environ["VITPROBE_KERNEL_CACHE"]}
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert files <= {p.name for p in (tmp_path / folder).iterdir()}
    assert "wrote" in done.stdout
