"""On a CUDA device: capture there equals capture on the CPU, in float32 and in bfloat16 (skipped
without a GPU; CI has none)."""

from __future__ import annotations

import pytest
import torch

from vitprobe.analysis.distance import MeanDistance
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.models.hf import load_hf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_capture_on_the_gpu_equals_the_cpu(tiny_dirs, dtype, atol):
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    kwargs = dict(fuse=("mean",), full_layers=[0, 2], reducers={"d": MeanDistance(), "e": RowEntropy()})
    cpu = load_hf(str(tiny_dirs["dinov2_with_registers"])).capture_pixels(pixels, **kwargs)
    model = load_hf(str(tiny_dirs["dinov2_with_registers"]))
    model.module.to("cuda", dtype)
    gpu = model.capture_pixels(pixels, **kwargs)
    for layer in (0, 2):
        torch.testing.assert_close(gpu.full[layer], cpu.full[layer], atol=atol, rtol=0)
    torch.testing.assert_close(gpu.fused["mean"], cpu.fused["mean"], atol=atol, rtol=0)
    torch.testing.assert_close(gpu.cls, cpu.cls, atol=atol, rtol=0)
    torch.testing.assert_close(gpu.reduced["e"], cpu.reduced["e"], atol=50 * atol, rtol=0)
