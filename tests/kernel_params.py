"""The attention kernels as test parameters: each test that takes ``kernel`` runs on every kernel that can
run here (the compiled C++ one needs a compiler; Triton runs on CPU tensors under its interpreter)."""

from __future__ import annotations

import os

import pytest

from vitprobe.kernels import torch_ops

KERNEL_NAMES = ["torch", "cpp", "triton"]


def kernel_attend(name: str):
    """The ``attend`` function of kernel ``name``; the test is skipped where that kernel cannot run."""
    import torch

    if name == "torch":
        return torch_ops.attend
    if name == "cpp":
        from vitprobe.kernels import cpp

        reason = cpp.unavailable(torch.device("cpu"))
        if reason:
            pytest.skip(reason)
        return cpp.attend
    from vitprobe.kernels import triton

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel runs on CPU tensors only under TRITON_INTERPRET=1")
    reason = triton.unavailable(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    return triton.attend
