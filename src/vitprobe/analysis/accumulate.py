"""Dataset statistics as accumulators: ``update`` with batches, ``compute`` the result, ``merge`` states.

An accumulator's state is a flat dict of tensors, each merged by one rule: "sum" (added) or
"cat" (concatenated along dim 0). States are plain tensors, so they can be saved (safetensors),
sent between processes and merged in any grouping; merging the states of disjoint shards gives
the state one process would have reached on the whole dataset (sums in float64, so the result
does not depend on the grouping beyond float64 rounding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

MERGE_RULES = ("sum", "cat")


class Accumulator(ABC):
    """Base of every dataset statistic: declare states with ``add_state``, fill them in ``update``."""

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._rules: dict[str, str] = {}

    def add_state(self, name: str, default: torch.Tensor, rule: str) -> None:
        """Declare a state tensor with its initial value and merge rule ("sum" or "cat")."""
        if rule not in MERGE_RULES:
            raise ValueError(f"unknown merge rule {rule!r}; use one of {MERGE_RULES}")
        self._state[name] = default.clone()
        self._rules[name] = rule

    def state(self, name: str) -> torch.Tensor:
        return self._state[name]

    def _add(self, name: str, value: torch.Tensor) -> None:
        """Fold ``value`` into state ``name`` by the state's rule."""
        current = self._state[name]
        value = value.to(device=current.device, dtype=current.dtype)
        if self._rules[name] == "sum":
            self._state[name] = current + value
        else:
            self._state[name] = torch.cat([current, value])

    @abstractmethod
    def update(self, *args, **kwargs) -> None:
        """Add one batch."""

    @abstractmethod
    def compute(self) -> dict[str, torch.Tensor]:
        """The statistic over everything added so far."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the state tensors on the CPU."""
        return {name: value.detach().cpu().clone() for name, value in self._state.items()}

    def merge(self, other: Accumulator | dict[str, torch.Tensor]) -> None:
        """Fold another accumulator's state (or a ``state_dict``) of the same kind into this one."""
        states = other.state_dict() if isinstance(other, Accumulator) else other
        if set(states) != set(self._state):
            raise ValueError(f"cannot merge states {sorted(states)} into {type(self).__name__} {sorted(self._state)}")
        for name, value in states.items():
            if self._rules[name] == "sum" and value.shape != self._state[name].shape:
                raise ValueError(f"state {name!r}: shape {tuple(value.shape)} != {tuple(self._state[name].shape)}")
            self._add(name, value)


class Moments(Accumulator):
    """Per-element mean and standard deviation over images of values shaped ``shape``.

    ``update(values (B, *shape))``; ``compute()`` gives ``mean`` and ``std`` (population, float64)
    of shape ``shape`` and ``count`` (images).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("sum", torch.zeros(self.shape, dtype=torch.float64), "sum")
        self.add_state("sum_sq", torch.zeros(self.shape, dtype=torch.float64), "sum")

    def update(self, values: torch.Tensor) -> None:
        if tuple(values.shape[1:]) != self.shape:
            raise ValueError(f"values {tuple(values.shape)} do not match (B, {self.shape})")
        v = values.detach().to(torch.float64)
        self._add("count", torch.tensor(v.shape[0]))
        self._add("sum", v.sum(0))
        self._add("sum_sq", (v * v).sum(0))

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.state("count").item()
        if n == 0:
            nan = torch.full(self.shape, float("nan"), dtype=torch.float64)
            return {"mean": nan, "std": nan.clone(), "count": self.state("count")}
        mean = self.state("sum") / n
        var = (self.state("sum_sq") / n - mean * mean).clamp_min(0.0)
        return {"mean": mean, "std": var.sqrt(), "count": self.state("count")}
