"""Hugging Face transformers adapter: the families described in ``models/huggingface/``, loaded with
transformers' own ``from_pretrained`` (no remote code) and wrapped as a ``VitModel``."""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from PIL import Image
from torch import nn

from ..capture import AttentionSite, mha_pool_site
from ..hub import locate
from ..io.preprocess import PreprocessSpec
from . import huggingface
from .base import Rebuild, UnsupportedModelError, VitModel
from .files import DamagedModel, check_safetensors, first_line, read_json
from .huggingface.spec import FAMILIES, HfFamily

log = logging.getLogger(__name__)

_WHY_NOT = {
    "swin": "windowed attention (B·windows, heads, 49, 49) has no global attention map",
    "swinv2": "windowed attention has no global attention map",
}


def hf_families() -> dict[str, HfFamily]:
    """Every described family by model type (the modules of ``models/huggingface`` register themselves)."""
    for info in pkgutil.iter_modules(huggingface.__path__):
        importlib.import_module(f"{huggingface.__name__}.{info.name}")
    return FAMILIES


def family_of(model_type: str) -> HfFamily:
    """The family of a config's ``model_type``; ``UnsupportedModelError`` (one line) when none is described."""
    families = hf_families()
    if model_type not in families:
        why = _WHY_NOT.get(model_type, "its attention layout is not known to vitprobe")
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported ({why}); supported Hugging Face types: "
            f"{', '.join(sorted(families))}; timm ViTs via 'timm:<name>'"
        )
    return families[model_type]


def vision_config(config):
    """The image tower's config: a dual model's ``vision_config``, else the config itself."""
    return getattr(config, "vision_config", None) or config


def attention_sites(vision: nn.Module, config, in_kernel: str | None = None) -> list[AttentionSite]:
    """Every self-attention layer of the image tower in forward order: modules owning linear q and k
    projections (``q_proj``/``k_proj`` or ``query``/``key``)."""
    sites = []
    heads = config.num_attention_heads
    for sub in vision.modules():
        for q_name, k_name in (("q_proj", "k_proj"), ("query", "key")):
            query, key = getattr(sub, q_name, None), getattr(sub, k_name, None)
            if isinstance(query, nn.Linear) and isinstance(key, nn.Linear):
                head_dim = query.out_features // heads
                scale = float(getattr(sub, "scaling", getattr(sub, "scale", head_dim**-0.5)))
                sites.append(AttentionSite(query, key, heads, head_dim, scale, in_kernel=in_kernel))
    if len(sites) != config.num_hidden_layers:
        raise UnsupportedModelError(
            f"found {len(sites)} attention layers with q/k projections, config says {config.num_hidden_layers}"
        )
    return sites


def blocks(module: nn.Module, sites: list[AttentionSite]) -> list[nn.Module]:
    """The transformer layer holding each attention site: the outermost module holding only that one."""
    owner: dict[int, nn.Module] = {}
    for sub in module.modules():  # pre-order: outer modules come first
        inside = {id(m) for m in sub.modules()}
        held = [i for i, site in enumerate(sites) if id(site.query) in inside]
        if len(held) == 1 and held[0] not in owner:
            owner[held[0]] = sub
    return [owner[i] for i in range(len(sites))]


def _native_side(config) -> int:
    """The input side a config was trained at: ``image_size``, or (NaFlex) the square of its position table."""
    size = getattr(config, "image_size", None)
    if size is None:
        return math.isqrt(config.num_patches) * config.patch_size
    return size if isinstance(size, int) else size[0]


def preprocess_from_dict(proc: dict | None, config) -> PreprocessSpec:
    """The model's own image-processor settings (preprocessor_config.json) as a PreprocessSpec."""
    if not proc:
        side = _native_side(config)
        log.warning("no preprocessor_config.json: resizing to %dx%d with mean/std 0.5", side, side)
        return PreprocessSpec(mean=(0.5,) * 3, std=(0.5,) * 3, resize_hw=(side, side))
    size = proc.get("size") or {}
    shortest = size.get("shortest_edge") if proc.get("do_resize", True) else None
    resize_hw = (size["height"], size["width"]) if "height" in size and not shortest else None
    if "max_num_patches" in proc and not size:  # NaFlex: the square grid of that many patches
        side = math.isqrt(proc["max_num_patches"]) * proc.get("patch_size", config.patch_size)
        resize_hw = (side, side)
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    return PreprocessSpec(
        mean=tuple(proc.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(proc.get("image_std", (0.5, 0.5, 0.5))),
        shortest_edge=shortest,
        resize_hw=resize_hw,
        crop_hw=(crop["height"], crop["width"]) if crop else None,
        resample=proc.get("resample", Image.Resampling.BILINEAR),
    )


Packed = tuple[type, transformers.PretrainedConfig, dict[str, torch.Tensor]]
"""A transformers module as pickling stores it: its class, its config, every parameter and buffer by name."""


def pack(module: nn.Module) -> Packed:
    """The module as class, config and tensors: transformers hooks the modules it records outputs from with
    local functions that pickle cannot store. Shared (tied) tensors are one object under each name."""
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    return type(module), module.config, tensors


def unpack(packed: Packed) -> nn.Module:
    """The module of ``pack``: built on the meta device (no initialisation), then given every tensor."""
    cls, config, tensors = packed
    with torch.device("meta"):
        module = cls(config)
    for name, tensor in tensors.items():
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner), leaf, tensor)
    return module


def wrap(module: nn.Module, name: str, preprocess: PreprocessSpec | None = None,
         source: str | None = None) -> VitModel:
    """Wrap a loaded transformers module of a described family (put in eval mode) as a VitModel;
    ``source``: the directory or hub id it came from (its tokenizer, for text prompts). Every function of
    the model runs ``module``; ``rebuild`` wraps a copy the same way."""
    family = family_of(module.config.model_type)
    if family.video is not None:  # clips in, tubelets out
        from .video import wrap_video

        return wrap_video(module, name, preprocess, source)
    module.eval()
    family.prepare(module)
    vision = family.vision(module)
    config = vision_config(module.config)
    preprocess = preprocess or preprocess_from_dict(None, config)

    def forward(pixels):
        return getattr(family.run(module, pixels), "logits", None)

    def attention_forward(pixels):
        """Eager attention for this call: logits or None, per-layer probabilities (B, heads, T, T) and
        each layer's output tokens (B, T, D), all in the autograd graph."""
        with family.eager(module):
            out = family.run(module, pixels, output_attentions=True, output_hidden_states=True)
        return getattr(out, "logits", None), list(out.attentions), list(out.hidden_states[1:])

    has_head = hasattr(module, "classifier") or hasattr(module, "cls_classifier")
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    sites = attention_sites(vision, config, family.in_kernel)
    pool_head = family.pool(module)
    return VitModel(
        name=name,
        family=f"hf-{module.config.model_type}",
        module=module,
        sites=sites,
        blocks=blocks(vision, sites),
        patch_weight=family.patch_weight(vision),
        position_grid=family.position_grid(vision),
        prefix_names=family.prefix_names(config),
        patch_size=patch,
        preprocess=preprocess,
        forward=forward,
        attention_forward=attention_forward,
        readout=family.readout(module),
        labels={int(k): v for k, v in module.config.id2label.items()} if has_head else {},
        pool=mha_pool_site(pool_head) if pool_head is not None else None,
        similarity=family.similarity(module, source) if family.similarity and source else None,
        feature=family.feature(module),
        rebuild=Rebuild(wrap, {"name": name, "preprocess": preprocess, "source": source}, pack, unpack),
    )


def _cached(spec: str, filename: str, local_only: bool) -> Path | None:
    """``filename`` of a hub id (from the cache, or fetched) or of a local directory; None where it has none."""
    path = transformers.utils.cached_file(
        spec, filename, _raise_exceptions_for_missing_entries=False, local_files_only=local_only,
    )
    return None if path is None else Path(path)


def check_weights(directory: Path) -> Path:
    """The weights of a local model directory (``model.safetensors``, its shards, or ``pytorch_model.bin``),
    every safetensors header read; ``DamagedModel`` when there are none or one is truncated or damaged."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise DamagedModel(f"{index}: no weight_map naming the weight files")
        for shard in sorted(set(weight_map.values())):
            check_safetensors(directory / shard)
        return index
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            if name.endswith(".safetensors"):
                check_safetensors(directory / name)
            return directory / name
    raise DamagedModel(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")


def check_processor(proc: dict, config, path: Path) -> None:
    """``DamagedModel`` for an image-processor config that contradicts the model's config: a mean or std
    without one number per input channel, a zero std, another patch size, or a size that is no positive
    whole number."""
    channels = getattr(config, "num_channels", 3)
    for key in ("image_mean", "image_std"):
        values = proc.get(key)
        numbers = isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in values)
        if values is not None and (not numbers or len(values) != channels):
            raise DamagedModel(f"{path}: {key} {values!r} is not one number for each of the model's {channels} "
                               "input channels")
    if 0 in (proc.get("image_std") or []):
        raise DamagedModel(f"{path}: image_std {proc['image_std']} holds a zero (pixels would be divided by it)")
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    if proc.get("patch_size", patch) != patch:
        raise DamagedModel(f"{path}: patch_size {proc['patch_size']} contradicts the model's patch size {patch} "
                           "(config.json)")
    for key in ("size", "crop_size"):
        entries = proc.get(key) or {}
        sides = entries.items() if isinstance(entries, dict) else [(key, entries)]
        for side, value in sides:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DamagedModel(f"{path}: {key} {side} is {value!r}, not a positive number of pixels")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading report (a table over many lines) unsaid: what it reports is raised or warned in one."""
    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)


def _from_pretrained(cls, spec: str, local_only: bool, weights: Path | None, **kwargs) -> nn.Module:
    """``cls.from_pretrained`` with each way the weights can fail the config in one line naming ``weights``
    (the local file; the spec for a hub id): shapes that differ raise ``DamagedModel``; weights the file
    lacks (left at their random start) give one warning."""
    from safetensors import SafetensorError

    where = weights or spec
    with _quiet_transformers():
        try:
            module, info = cls.from_pretrained(spec, trust_remote_code=False, local_files_only=local_only,
                                               output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        except (OSError, RuntimeError, ValueError, TypeError, SafetensorError) as err:
            raise DamagedModel(f"{where}: {first_line(err)}") from None
    mismatched = sorted(info["mismatched_keys"], key=lambda entry: entry[0])
    if mismatched:
        key, in_file, in_model = mismatched[0]
        raise DamagedModel(f"{where}: {len(mismatched)} weights do not match the shapes of config.json, first {key}: "
                           f"{tuple(in_file)} in the file, {tuple(in_model)} from the config")
    missing = sorted(info["missing_keys"])
    if missing:
        log.warning("%s: %d weights of the model are not in the file and start random (first: %s)", where,
                    len(missing), missing[0])
    return module


def load_hf(spec: str, attn_implementation: str | None = None) -> VitModel:
    """Load a hub id or local directory with transformers' own from_pretrained (no remote code). A damaged
    folder raises ``DamagedModel`` in one line naming the file: a config.json or preprocessor_config.json
    that is not JSON, no weights, truncated weights, weights of other shapes than the config's, or an image
    processor that contradicts the model; a model type vitprobe has no family for is ``UnsupportedModelError``."""
    local_only = locate(spec)
    config_path = _cached(spec, "config.json", local_only)
    if config_path is None:
        raise DamagedModel(f"{spec}: no config.json")
    model_type = read_json(config_path).get("model_type")
    if not isinstance(model_type, str):
        raise DamagedModel(f"{config_path}: no model_type saying which model this is")
    try:
        family = family_of(model_type)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"{config_path}: {err}") from None
    try:
        config = transformers.AutoConfig.from_pretrained(spec, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DamagedModel(f"{config_path}: {first_line(err)}") from None
    names = ("video_preprocessor_config.json", "preprocessor_config.json") if family.video else (
        "preprocessor_config.json",)
    processor_path = next((p for p in (_cached(spec, n, local_only) for n in names) if p is not None), None)
    processor = read_json(processor_path) if processor_path is not None else None
    if processor is not None:
        shape = vision_config(config)
        if family.video is not None:
            from .video import processor_shape

            shape = processor_shape(config, family.video)
        check_processor(processor, shape, processor_path)
    weights = check_weights(config_path.parent) if Path(spec).expanduser().is_dir() else None
    arch = (config.architectures or [""])[0]
    cls = getattr(transformers, arch) if arch in family.classes else transformers.AutoModel
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    module = _from_pretrained(cls, spec, local_only, weights, **kwargs)
    if family.video is not None:
        from .video import clip_preprocess

        return wrap(module, spec, clip_preprocess(processor, config, family.video), spec)
    return wrap(module, spec, preprocess_from_dict(processor, vision_config(config)), spec)
