"""Model files read with a one-line answer for each way they can be damaged: a JSON file that is not JSON, a
safetensors file that is truncated or is not one, and weights whose names or shapes do not match the model.
Every error is a ``DamagedModel``, whose message names the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


class DamagedModel(ValueError):
    """A model file that cannot be used; ``str()`` is one line, ``"<file>: <problem>"``."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type where it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``DamagedModel`` when it cannot be read, is not JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DamagedModel(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DamagedModel(f"{path}: cannot read ({first_line(err)})") from None
    if not isinstance(value, dict):
        raise DamagedModel(f"{path}: not a JSON object but {type(value).__name__}")
    return value


def check_safetensors(path: Path) -> None:
    """Read the header of a safetensors file (not its tensors): ``DamagedModel`` when the file is missing,
    truncated, or not a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except SafetensorError as err:
        raise DamagedModel(f"{path}: truncated or not a safetensors file ({first_line(err)})") from None
    except OSError as err:
        raise DamagedModel(f"{path}: cannot read ({first_line(err)})") from None


def _shape(value: torch.Tensor) -> tuple[int, ...]:
    return tuple(value.shape)


def load_state(module: nn.Module, path: Path) -> None:
    """Load a local safetensors state dict (never a pickle) into ``module``, every key required, every shape
    equal; ``DamagedModel`` naming the file and the first key that does not fit."""
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise DamagedModel(f"{path}: local weights must be a .safetensors file")
    check_safetensors(path)
    state = load_file(str(path))
    own = module.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        parts = ([f"{len(missing)} weights of the model missing (first: {missing[0]})"] if missing else []) + \
                ([f"{len(unexpected)} the model does not have (first: {unexpected[0]})"] if unexpected else [])
        raise DamagedModel(f"{path}: not this model's weights: " + "; ".join(parts))
    wrong = [key for key in own if _shape(own[key]) != _shape(state[key])]
    if wrong:
        key = wrong[0]
        raise DamagedModel(f"{path}: {len(wrong)} weights do not match the model's shapes, first {key}: "
                           f"{_shape(state[key])} in the file, {_shape(own[key])} in the model")
    module.load_state_dict(state, strict=True)
