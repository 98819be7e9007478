"""Damaged local model folders and files: each fault is one line naming the file and the problem (a
``DamagedModel``, a ``ValueError``), and on the command line one error line with exit code 2, never a
traceback nor transformers' loading table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitprobe as vp
from tests import timm_models
from tests.test_runner import single_thread_env
from vitprobe import UnsupportedModelError
from vitprobe.models.files import DamagedModel


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def shard(folder: Path) -> None:
    """The weights as an index naming two shards, the second of which is not there."""
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    names = ["vit.embeddings.cls_token", "classifier.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        names[0]: "model-00001-of-00002.safetensors", names[1]: "model-00002-of-00002.safetensors"}}))


FAULTS: dict[str, tuple[Callable[[Path], None], str, str]] = {  # name: (damage, file named, problem)
    "config not JSON": (lambda d: (d / "config.json").write_text('{"model_type": "vit",'), "config.json",
                        "not valid JSON"),
    "config a list": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "not a JSON object"),
    "no model type": (lambda d: edit_json(d / "config.json", model_type=None), "config.json", "no model_type"),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), "", "no weights (model.safetensors"),
    "weights cut in the header": (lambda d: truncate(d / "model.safetensors", 0.001), "model.safetensors",
                                  "truncated or not a safetensors file (Error while deserializing header"),
    "weights cut in half": (lambda d: truncate(d / "model.safetensors", 0.5), "model.safetensors",
                            "truncated or not a safetensors file (Error while deserializing header: incomplete "
                            "metadata"),
    "a shard missing": (shard, "model-00002-of-00002.safetensors", "cannot read"),
    "shapes not the config's": (lambda d: edit_json(d / "config.json", hidden_size=48), "model.safetensors",
                                "52 weights do not match the shapes of config.json, first classifier.weight: (5, 32) "
                                "in the file, (5, 48) from the config"),
    "processor not JSON": (lambda d: (d / "preprocessor_config.json").write_text("{"), "preprocessor_config.json",
                           "not valid JSON"),
    "processor mean of two channels": (lambda d: edit_json(d / "preprocessor_config.json", image_mean=[0.5, 0.5]),
                                       "preprocessor_config.json",
                                       "image_mean [0.5, 0.5] is not one number for each of the model's 3"),
    "processor std of zero": (lambda d: edit_json(d / "preprocessor_config.json", image_std=[0.5, 0, 0.5]),
                              "preprocessor_config.json", "image_std [0.5, 0, 0.5] holds a zero"),
    "processor patch of another model": (lambda d: edit_json(d / "preprocessor_config.json", patch_size=16),
                                         "preprocessor_config.json",
                                         "patch_size 16 contradicts the model's patch size 8"),
    "processor size not a number": (lambda d: edit_json(d / "preprocessor_config.json",
                                                        size={"height": "32", "width": 32}),
                                    "preprocessor_config.json", "size height is '32', not a positive number"),
}


def damaged(source: Path, root: Path, fault: str) -> Path:
    folder = root / fault.replace(" ", "_").replace("'", "")
    shutil.copytree(source, folder)
    FAULTS[fault][0](folder)
    return folder


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_damaged_folder_is_one_line_naming_the_file_and_the_problem(tiny_dirs, tmp_path, fault):
    folder = damaged(tiny_dirs["vit"], tmp_path, fault)
    _, named, problem = FAULTS[fault]
    with pytest.raises(DamagedModel) as raised:
        vp.load(str(folder))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{folder / named if named else folder}: {problem}"), message


def test_an_unknown_model_type_names_the_config_and_the_supported_types(tiny_dirs, tmp_path):
    folder = tmp_path / "unknown"
    shutil.copytree(tiny_dirs["vit"], folder)
    edit_json(folder / "config.json", model_type="vit_from_the_future")
    with pytest.raises(UnsupportedModelError) as raised:
        vp.load(str(folder))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{folder / 'config.json'}: model type 'vit_from_the_future' "
                                                      "is not supported")
    assert "dinov2_with_registers" in message


def test_weights_missing_from_the_file_give_one_warning(tiny_dirs, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(tiny_dirs["vit"], folder)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("classifier.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    model = vp.load(str(folder))
    assert model.labels
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "vitprobe.models.hf"]
    assert warning == (f"{folder / 'model.safetensors'}: 2 weights of the model are not in the file and start random "
                       "(first: classifier.bias)")


@pytest.mark.parametrize("fault", ["weights cut in half", "shapes not the config's"])
def test_the_command_line_says_it_in_one_line_and_exits_2(tiny_dirs, tmp_path, fault):
    folder = damaged(tiny_dirs["vit"], tmp_path, fault)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    result = subprocess.run([sys.executable, "-m", "vitprobe", "explain", str(image), "--model", str(folder), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                            env=single_thread_env())
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    _, named, problem = FAULTS[fault]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vitprobe: error: cannot load model '{folder}': {folder / named}: {problem}")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(timm_models.TORCHVISION is None, reason=timm_models.SKIP_REASON)
def test_damaged_local_timm_weights_are_one_line(tmp_path):
    import timm
    from safetensors.torch import save_file

    def save(name: str, path: Path, keep: Callable[[str], bool] = lambda key: True) -> Path:
        state = timm.create_model(name, pretrained=False).state_dict()
        save_file({k: v.contiguous() for k, v in state.items() if keep(k)}, path)
        return path

    good = save("vit_tiny_patch16_224", tmp_path / "tiny.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = {
        cut: "truncated or not a safetensors file (Error while deserializing header: incomplete metadata",
        save("vit_small_patch16_224", tmp_path / "small.safetensors"):
            "151 weights do not match the model's shapes, first cls_token: (1, 1, 384) in the file, (1, 1, 192) in "
            "the model",
        save("vit_tiny_patch16_224", tmp_path / "fewer.safetensors", lambda key: not key.startswith("head.")):
            "not this model's weights: 2 weights of the model missing (first: head.bias)",
        tmp_path / "absent.safetensors": "cannot read (No such file or directory",
    }
    for path, problem in cases.items():
        with pytest.raises(DamagedModel) as raised:
            vp.load(f"timm:vit_tiny_patch16_224:{path}")
        assert str(raised.value).startswith(f"{path}: {problem}"), str(raised.value)
