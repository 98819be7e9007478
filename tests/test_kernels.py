"""Every attention kernel against the torch-op kernel and float64, request by request; the choice of kernel."""

from __future__ import annotations

import logging

import pytest
import torch

import vitprobe as vp
from tests.kernel_params import KERNEL_NAMES, kernel_attend
from vitprobe import kernels
from vitprobe.analysis.distance import MeanDistance, patch_distances
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.kernels import cpp, torch_ops
from vitprobe.kernels.base import LayerRequest
from vitprobe.layout import TokenLayout
from vitprobe.models.hf import load_hf

COMPILED = [name for name in KERNEL_NAMES if name != "torch"]


def projection_views(batch: int, heads: int, t: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, heads, T, d) as a model's projections leave them: views of (B, T, heads·d), strided."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.2, 2.5, t).view(1, t, 1)  # rows from spread to peaked
    q, k, v = (torch.randn(batch, t, heads * d, generator=g) for _ in range(3))
    q = q * spread
    return tuple(x.view(batch, t, heads, d).transpose(1, 2) for x in (q, k, v))


def full_request(batch: int, t: int, layout: TokenLayout | None = None) -> LayerRequest:
    """A request that asks for everything a kernel makes."""
    g = torch.Generator().manual_seed(1)
    dots = {"patch_distance": patch_distances(layout)} if layout is not None else {}
    dots["random"] = torch.rand(t, t, generator=g)
    return LayerRequest(
        cls_index=0, fuse={how: torch.empty(batch, t, t) for how in ("mean", "max", "min")}, full=True,
        entropy=True, dots=dots, masses={1, 3},
    )


def float64_reference(q, k, v, scale, bias, request) -> dict[str, torch.Tensor]:
    """What a request asks for, from the definitions in float64."""
    scores = q.double() @ k.double().transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias.double()
    p = scores.softmax(dim=-1)
    out = {"output": p @ v.double(), "cls": p[:, :, 0], "full": p, "mean": p.mean(1), "max": p.amax(1),
           "min": p.amin(1), "entropy": -torch.special.xlogy(p, p).sum(-1)}
    for name, weights in request.dots.items():
        out[f"dot:{name}"] = (p * weights.double()).sum(-1)
    for start in request.masses:
        out[f"mass:{start}"] = p[..., start:].sum(-1)
    return out


def kernel_outputs(result, request) -> dict[str, torch.Tensor]:
    got = {"output": result.output, "cls": result.cls, "full": result.full, "entropy": result.entropy}
    got.update(request.fuse)
    got.update({f"dot:{name}": value for name, value in result.dots.items()})
    got.update({f"mass:{start}": value for start, value in result.masses.items()})
    return got


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize(("batch", "heads", "grid", "d", "with_bias"), [
    (2, 3, (3, 4), 8, False),  # T = 14: shorter than one tile
    (3, 2, (7, 9), 16, True),  # T = 65, a bias broadcast over the batch: tiles that do not divide T
    (1, 4, (10, 10), 24, False),  # T = 102 with one image: the rows split among the threads
])
def test_every_output_equals_float64(kernel, batch, heads, grid, d, with_bias):
    layout = TokenLayout(("cls", "reg"), grid, 16)
    t = layout.n_tokens
    q, k, v = projection_views(batch, heads, t, d, seed=t)
    bias = torch.randn(1, heads, t, t, generator=torch.Generator().manual_seed(2)) if with_bias else None
    request = full_request(batch, t, layout)
    result = kernel_attend(kernel)(q, k, d**-0.5, request, values=v, bias=bias)
    assert result.kernel == kernel
    want = float64_reference(q, k, v, d**-0.5, bias, request)
    got = kernel_outputs(result, request)
    assert set(got) == set(want)
    for name, value in got.items():
        assert value.dtype == torch.float32 and value.shape == want[name].shape, name
        torch.testing.assert_close(value.double(), want[name], atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kernel", COMPILED)
def test_compiled_kernels_equal_the_torch_op_kernel(kernel):
    """The maps within 1e-5 of the torch-op kernel, and the attention output within float32 rounding."""
    batch, heads, t, d = 2, 3, 50, 32
    q, k, v = projection_views(batch, heads, t, d, seed=5)
    ours = kernel_attend(kernel)(q, k, 0.125, request := full_request(batch, t), values=v)
    reference = torch_ops.attend(q, k, 0.125, ref_request := full_request(batch, t), values=v)
    got, want = kernel_outputs(ours, request), kernel_outputs(reference, ref_request)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(ours.output, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.125),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_fused_rows_go_into_the_callers_stack(kernel):
    """Head-fused rows are written into the (B, T, T) slice the recorder owns, a view of its (L, B, T, T)."""
    q, k, _ = projection_views(2, 3, 17, 8, seed=9)
    stack = torch.zeros(3, 2, 17, 17)
    request = LayerRequest(fuse={"mean": stack[1]})
    kernel_attend(kernel)(q, k, 0.3, request)
    want = (q.double() @ k.double().transpose(-1, -2) * 0.3).softmax(-1).mean(1)
    torch.testing.assert_close(stack[1].double(), want, atol=1e-6, rtol=0)
    assert stack[0].abs().max() == 0 and stack[2].abs().max() == 0


@pytest.mark.parametrize("kernel", ["torch", "cpp"])
def test_capture_on_each_kernel_gives_the_same_maps_and_names_it(tiny_dirs, monkeypatch, kernel):
    kernel_attend(kernel)
    model = load_hf(str(tiny_dirs["dinov2_with_registers"]))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reducers = {"entropy": RowEntropy(), "distance": MeanDistance(), "renormalized": MeanDistance(True)}
    monkeypatch.setenv("VITPROBE_KERNEL", "torch")
    reference = model.capture_pixels(pixels, fuse=("mean",), full_layers=[1], reducers=reducers)
    monkeypatch.setenv("VITPROBE_KERNEL", kernel)
    cap = model.capture_pixels(pixels, fuse=("mean",), full_layers=[1], reducers=reducers)
    assert cap.kernels == (kernel,) and reference.kernels == ("torch",)
    torch.testing.assert_close(cap.fused["mean"], reference.fused["mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.full[1], reference.full[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(cap.cls, reference.cls, atol=1e-5, rtol=0)
    for name in reducers:
        torch.testing.assert_close(cap.reduced[name], reference.reduced[name], atol=1e-5, rtol=1e-6)


def test_cls_rows_alone_run_no_kernel(tiny_dirs):
    model = load_hf(str(tiny_dirs["vit"]))
    cap = model.capture_pixels(torch.randn(1, 3, 32, 32), fuse=(), full_layers=())
    assert cap.kernels == () and cap.cls is not None


def test_row_reducers_take_the_torch_op_kernel(monkeypatch):
    class RowMax(vp.RowReducer):
        def start(self, batch, heads, layout, device):
            self.out = torch.empty(batch, heads, layout.n_tokens)

        def update(self, block):
            self.out[block.images, :, block.rows] = block.probs.amax(-1)

        def finish(self):
            return self.out

    monkeypatch.setenv("VITPROBE_KERNEL", "cpp")
    request = LayerRequest(block_reducers=[RowMax()])
    assert kernels.select_kernel(torch.device("cpu"), request) is torch_ops.attend


def test_kernel_choice_reads_the_environment(monkeypatch):
    monkeypatch.delenv("VITPROBE_KERNEL", raising=False)
    assert kernels.kernel_choice() == "auto"
    monkeypatch.setenv("VITPROBE_KERNEL", "Torch")
    assert kernels.kernel_choice() == "torch"
    assert kernels.select_kernel(torch.device("cpu"), LayerRequest()) is torch_ops.attend
    monkeypatch.setenv("VITPROBE_KERNEL", "cuda")
    with pytest.raises(ValueError, match="VITPROBE_KERNEL='cuda' is not a kernel; use one of auto, cpp, triton, torch"):
        kernels.kernel_choice()


def test_no_compiler_gives_one_line_and_the_torch_op_kernel(monkeypatch, tmp_path, caplog):
    """Hiding the compiler: one log line says why, and the torch-op kernel computes the same statistics."""
    monkeypatch.setattr(cpp, "_loaded", {})
    monkeypatch.setattr(kernels, "_NOTICED", set())
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("VITPROBE_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.delenv("VITPROBE_KERNEL", raising=False)
    q, k, _ = projection_views(1, 2, 14, 8, seed=4)
    with caplog.at_level(logging.WARNING, logger="vitprobe.kernels"):
        for _ in range(3):
            chosen = kernels.select_kernel(torch.device("cpu"), LayerRequest(entropy=True))
    assert chosen is torch_ops.attend
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"the C++ attention kernel cannot be built (no C++ compiler ({tmp_path / 'no-such-compiler'}) "
                     "found); attention statistics use the torch-op kernel"]
    assert not (tmp_path / "kernels").exists()


def test_build_folder_follows_the_cache_and_the_source(monkeypatch, tmp_path):
    monkeypatch.delenv("VITPROBE_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path))
    folder = cpp.build_dir()
    assert folder.parent == tmp_path / "kernels" and folder.name.startswith("attention-")
    monkeypatch.setattr(cpp, "SOURCE", tmp_path / "edited.cpp")
    (tmp_path / "edited.cpp").write_text("// another kernel")
    assert cpp.build_dir() != folder


def test_tiles_give_every_thread_work():
    assert cpp.tile_rows(8, 1370, 2) == 128  # 88 tasks
    assert cpp.tile_rows(1, 1025, 2) == 64  # 128 rows would give 9 tasks to 2 threads: halved to 17
    assert cpp.tile_rows(1, 5330, 2) == 128  # 42 tasks, whatever T
    assert cpp.tile_rows(1, 5330, 64) == 16  # at least 16 rows
    assert cpp.tile_rows(4, 14, 2) == 14  # never more rows than tokens


def test_a_large_buffers_layer_slices_stack_without_a_copy():
    """The recorder writes each layer into a slice of one (L, B, T, T) buffer; above the reuse threshold that
    buffer comes from the pool, and stacking its slices must give it back, not a second copy of its size."""
    from vitprobe.capture import stack_layers
    from vitprobe.kernels import buffers

    buffers.release()
    stack = buffers.empty_buffer((3, 2, 1800, 1800))  # 74 MiB: above the reuse threshold
    assert stack.numel() * 4 >= buffers._LEAST_BYTES
    stacked = stack_layers({5: stack[0], 6: stack[1], 7: stack[2]}, [5, 6, 7])
    assert stacked.data_ptr() == stack.data_ptr() and stacked.shape == stack.shape
    del stack, stacked
    buffers.release()


def test_large_buffers_are_reused_only_once_nothing_refers_to_them():
    from vitprobe.kernels import buffers

    buffers.release()
    shape = (2, 4, 2048, 2048)  # 128 MiB: above the reuse threshold
    first = buffers.empty_buffer(shape)
    address = first.data_ptr()
    second = buffers.empty_buffer(shape)
    assert second.data_ptr() != address  # the first is in use
    view = first[1]
    del first
    assert buffers.empty_buffer(shape).data_ptr() != address  # a view still refers to it
    del view, second
    again = buffers.empty_buffer(shape)
    assert again.data_ptr() == address and again.shape == shape
    assert len(buffers._pool) == 1  # the other free one was dropped
    small = buffers.empty_buffer((4, 4))
    assert small.shape == (4, 4) and len(buffers._pool) == 1
    del again
    buffers.release()
    assert buffers._pool == []
