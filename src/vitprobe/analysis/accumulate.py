"""Dataset statistics as accumulators: ``update`` with batches, ``compute`` the result, ``merge`` states.

An accumulator's state is a flat dict of tensors, each merged by one rule: "sum" (added), "cat"
(concatenated along dim 0) or "own" (the accumulator's ``merge`` combines it, as ``Moments`` does).
States are plain tensors, so they can be saved (safetensors), sent between processes and merged in
any grouping; merging the states of disjoint shards gives the state one process would have reached
on the whole dataset (in float64, so the result does not depend on the grouping beyond float64
rounding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

MERGE_RULES = ("sum", "cat", "own")


class Accumulator(ABC):
    """Base of every dataset statistic: declare states with ``add_state``, fill them in ``update``."""

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._rules: dict[str, str] = {}

    def add_state(self, name: str, default: torch.Tensor, rule: str) -> None:
        """Declare a state tensor with its initial value and merge rule ("sum", "cat" or "own")."""
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
        if self._rules[name] == "own":
            raise TypeError(f"state {name!r} is combined by {type(self).__name__}.merge, not added")
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
    of shape ``shape`` and ``count`` (images). The state is (count, mean, M2 = Σ (x − mean)²), combined
    batch by batch and shard by shard with Chan et al.'s pairwise rule, so a small spread around a
    large mean keeps its digits (Σx² − n·mean² lost 6e-6 of a std of 1e-3 around 116).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.add_state("count", torch.zeros((), dtype=torch.int64), "own")
        self.add_state("mean", torch.zeros(self.shape, dtype=torch.float64), "own")
        self.add_state("m2", torch.zeros(self.shape, dtype=torch.float64), "own")

    def update(self, values: torch.Tensor) -> None:
        if tuple(values.shape[1:]) != self.shape:
            raise ValueError(f"values {tuple(values.shape)} do not match (B, {self.shape})")
        v = values.detach().to(torch.float64)
        if v.shape[0]:
            mean = v.mean(0)
            self._combine(v.shape[0], mean, ((v - mean) ** 2).sum(0))

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_a = int(self.state("count"))
        n = n_a + n_b
        if n_b == 0:
            return
        mean_a, m2_a = self.state("mean"), self.state("m2")
        mean_b, m2_b = mean_b.to(mean_a), m2_b.to(m2_a)
        delta = mean_b - mean_a
        self._state["mean"] = mean_a + delta * (n_b / n)
        self._state["m2"] = m2_a + m2_b + delta * delta * (n_a * n_b / n)
        self._state["count"] = torch.tensor(n, dtype=torch.int64)

    def merge(self, other: Accumulator | dict[str, torch.Tensor]) -> None:
        states = other.state_dict() if isinstance(other, Accumulator) else other
        if set(states) != set(self._state):
            raise ValueError(f"cannot merge states {sorted(states)} into {type(self).__name__} {sorted(self._state)}")
        if states["mean"].shape != self._state["mean"].shape:
            raise ValueError(f"state 'mean': shape {tuple(states['mean'].shape)} != {self.shape}")
        self._combine(int(states["count"]), states["mean"], states["m2"])

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.state("count").item()
        if n == 0:
            nan = torch.full(self.shape, float("nan"), dtype=torch.float64)
            return {"mean": nan, "std": nan.clone(), "count": self.state("count")}
        return {"mean": self.state("mean").clone(), "std": (self.state("m2") / n).clamp_min(0.0).sqrt(),
                "count": self.state("count")}
