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


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_kernels_on_the_gpu_equal_float64(kernel):
    """The Triton kernel compiled for the device (and the torch-op one), every output against float64."""
    from tests.test_kernels import float64_reference, full_request, kernel_outputs, projection_views
    from vitprobe.kernels import torch_ops

    if kernel == "triton":
        pytest.importorskip("triton")
        from vitprobe.kernels import triton as attend_module
    else:
        attend_module = torch_ops
    q, k, v = (x.cuda() for x in projection_views(2, 6, 197, 64, seed=0))
    request = full_request(2, 197)
    request.fuse = {how: out.cuda() for how, out in request.fuse.items()}
    request.dots = {name: w.cuda() for name, w in request.dots.items()}
    result = attend_module.attend(q, k, 0.125, request, values=v)
    want = float64_reference(q, k, v, 0.125, None, request)
    for name, value in kernel_outputs(result, request).items():
        torch.testing.assert_close(value.double(), want[name], atol=2e-6, rtol=1e-5, msg=name)
