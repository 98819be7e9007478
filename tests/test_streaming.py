"""Block-streamed capture and the streamed reducers against float64 references written from the formulas."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from tests.kernel_params import KERNEL_NAMES, kernel_attend
from tests.test_capture import eager_attentions
from vitprobe.analysis.distance import MeanDistance, patch_distances
from vitprobe.analysis.entropy import RowEntropy
from vitprobe.analysis.entropy import entropy as row_entropy
from vitprobe.analysis.rollout import rollout_rows
from vitprobe.capture import stack_layers
from vitprobe.kernels import torch_ops
from vitprobe.kernels.base import AttentionBlock, LayerRequest
from vitprobe.kernels.torch_ops import block_shape, for_each_block
from vitprobe.layout import TokenLayout
from vitprobe.models.hf import load_hf

LAYOUT = TokenLayout(("cls", "reg0"), (3, 4), 16)  # T = 14


def float64_distance(attn: np.ndarray, layout: TokenLayout, renormalize: bool) -> np.ndarray:
    """Mean attention distance per head, float64: attn (B, heads, T, T) -> (B, heads)."""
    p = layout.n_prefix
    h, w = layout.grid_hw
    pos = np.array([(r, c) for r in range(h) for c in range(w)], dtype=np.float64) * layout.patch_size
    dist = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    patches = attn[:, :, p:, p:].astype(np.float64)
    per_query = (patches * dist).sum(-1)
    if renormalize:
        per_query = per_query / patches.sum(-1)
    return per_query.mean(-1)


def float64_entropy(attn: np.ndarray) -> np.ndarray:
    a = attn.astype(np.float64)
    return -(a * np.log(np.where(a > 0, a, 1.0))).sum(-1)


def float64_rollout(fused: np.ndarray, cls: int) -> np.ndarray:
    """joint = Â_L ⋯ Â_1 with Â = ½A + ½I, rows renormalised; the CLS row per image. fused (L, B, T, T)."""
    n_layers, batch, t, _ = fused.shape
    out = np.zeros((batch, t))
    for b in range(batch):
        joint = np.eye(t)
        for layer in range(n_layers):
            a = 0.5 * fused[layer, b].astype(np.float64) + 0.5 * np.eye(t)
            joint = (a / a.sum(axis=1, keepdims=True)) @ joint
        out[b] = joint[cls]
    return out


def random_qk(batch: int = 2, heads: int = 3, t: int = LAYOUT.n_tokens, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, t, d, generator=g) * 1.5, torch.randn(batch, heads, t, d, generator=g)


def streamed(reducer, q, k, scale, layout=LAYOUT, kernel="torch") -> torch.Tensor:
    """One layer's result of a ``RowStatReducer`` computed by the named kernel."""
    request = LayerRequest()
    reducer.ask(request, layout, q.device)
    return reducer.reduce(kernel_attend(kernel)(q, k, scale, request), layout)


def collect_blocks(q, k, scale) -> list[AttentionBlock]:
    """Copies of every block (the buffers are reused), in the order the workers produced them."""
    blocks, lock = [], threading.Lock()

    def keep(block: AttentionBlock) -> None:
        with lock:
            blocks.append(AttentionBlock(block.images, block.rows, block.probs.clone(), block.shifted.clone(),
                                         block.log_z.clone()))

    for_each_block(q, k, scale, keep)
    return blocks


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 3 query rows of one image (T = 14 gives a short last block)."""
    monkeypatch.setitem(torch_ops._BLOCK_BYTES, "cpu", 3 * 3 * LAYOUT.n_tokens * 4)
    monkeypatch.setattr(torch_ops, "_MIN_BLOCK_ROWS", 1)


def test_blocks_cover_every_row_once_and_equal_softmax(small_blocks):
    q, k = random_qk()
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.3, dim=-1)
    seen = torch.zeros(2, LAYOUT.n_tokens, dtype=torch.int64)
    for block in collect_blocks(q, k, 0.3):
        assert block.probs.shape[0] == 1 and block.probs.shape[2] <= 3
        seen[block.images, block.rows] += 1
        scores = q[block.images, :, block.rows].double() @ k[block.images].double().transpose(-1, -2) * 0.3
        row_max = scores.amax(-1, keepdim=True)
        assert torch.allclose(block.probs.double(), ref[block.images, :, block.rows], atol=1e-6)
        assert torch.allclose(block.shifted.double(), scores - row_max, atol=1e-5)
        assert torch.allclose(block.log_z.double(), torch.logsumexp(scores, -1) - row_max[..., 0], atol=1e-5)
    assert torch.equal(seen, torch.ones_like(seen))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_worker_threads_give_the_same_result(small_blocks, threads):
    q, k = random_qk(batch=3, seed=11)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = streamed(RowEntropy(), q, k, 0.5)
    finally:
        torch.set_num_threads(previous)
    attn = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.5, dim=-1)
    np.testing.assert_allclose(ours.numpy(), float64_entropy(attn.numpy()), atol=1e-5)
    assert torch.get_num_threads() == previous


def test_worker_errors_reach_the_caller(small_blocks):
    q, k = random_qk()

    def broken(block: AttentionBlock) -> None:
        raise RuntimeError("reducer failed")

    with pytest.raises(RuntimeError, match="reducer failed"):
        for_each_block(q, k, 1.0, broken)


def test_workers_leave_new_threads_their_default_thread_count():
    q, k = random_qk()
    for_each_block(q, k, 1.0, lambda block: None)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [torch.get_num_threads()]


def test_block_shape_budget():
    cpu = torch.device("cpu")
    assert block_shape(8, 6, 1370, cpu) == (1, 64)  # DINOv2-S/14 @ 518: the 63 rows of 2 MiB, raised to 64
    assert block_shape(8, 12, 197, cpu) == (1, 197)  # ViT-B/16 @ 224: one image per block
    assert block_shape(8, 4, 17, cpu) == (8, 17)  # tiny: the whole batch at once
    assert block_shape(1, 6, 5330, cpu) == (1, 64)  # DINOv2-S/14 @ 1022: 16 rows would fit 2 MiB; 64 are kept


@pytest.mark.parametrize("kernel", ["torch", "cpp"])
@pytest.mark.parametrize("kind", ["vit", "dinov2_with_registers"])
def test_streamed_capture_equals_eager_in_small_blocks(tiny_dirs, kind, kernel, monkeypatch):
    kernel_attend(kernel)  # skips where the kernel cannot run
    monkeypatch.setenv("VITPROBE_KERNEL", kernel)
    monkeypatch.setitem(torch_ops._BLOCK_BYTES, "cpu", 4 * 5 * 4 * 4 * 4)  # 1 image, 3 or 4 query rows
    monkeypatch.setattr(torch_ops, "_MIN_BLOCK_ROWS", 1)
    model = load_hf(str(tiny_dirs[kind]))
    pixels = torch.randn(3, 3, 32, 32)
    cap = model.capture_pixels(pixels, full_layers=[0, 2], fuse=("mean", "max"),
                               reducers={"entropy": RowEntropy(), "distance": MeanDistance()})
    reference = eager_attentions(tiny_dirs[kind], pixels, kind)
    for layer, ref in enumerate(reference):
        assert torch.allclose(cap.cls[layer], ref[:, :, 0], atol=1e-5)
        assert torch.allclose(cap.fused["mean"][layer], ref.mean(1), atol=1e-5)
        assert torch.allclose(cap.fused["max"][layer], ref.amax(1), atol=1e-5)
        ent = float64_entropy(ref.numpy())
        np.testing.assert_allclose(cap.reduced["entropy"][layer].numpy(), ent, atol=1e-5)
        dist = float64_distance(ref.numpy(), cap.layout, renormalize=False)
        np.testing.assert_allclose(cap.reduced["distance"][layer].numpy(), dist, rtol=1e-5)
    for layer in (0, 2):
        assert torch.allclose(cap.full[layer], reference[layer], atol=1e-5)
    assert cap.reduced["entropy"].shape == (3, 3, 4, cap.layout.n_tokens)
    assert cap.reduced["distance"].shape == (3, 3, 4)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_row_entropy_matches_float64_and_bounds(small_blocks, kernel):
    q, k = random_qk(seed=3)
    ours = streamed(RowEntropy(), q, k, 0.7, kernel=kernel)
    attn = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.7, dim=-1)
    np.testing.assert_allclose(ours.numpy(), float64_entropy(attn.numpy()), atol=1e-5)
    np.testing.assert_allclose(row_entropy(attn.float()).numpy(), float64_entropy(attn.numpy()), atol=1e-5)
    assert (ours >= -1e-6).all() and (ours <= math.log(LAYOUT.n_tokens) + 1e-6).all()


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_entropy_oracles(kernel):
    t = LAYOUT.n_tokens
    zero = torch.zeros(1, 1, t, 4)
    uniform = streamed(RowEntropy(), zero, zero, 1.0, kernel=kernel)
    assert torch.allclose(uniform, torch.full_like(uniform, math.log(t)), atol=1e-6)
    peaked = torch.eye(t).mul(60.0)[None, None]  # q_i·k_j = 3600·[i = j]: one-hot rows
    assert torch.allclose(streamed(RowEntropy(), peaked, peaked, 1.0, kernel=kernel), torch.zeros(1, 1, t), atol=1e-5)
    assert torch.allclose(row_entropy(torch.eye(t)), torch.zeros(t))


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("renormalize", [False, True])
def test_mean_distance_matches_float64(small_blocks, renormalize, kernel):
    q, k = random_qk(seed=5)
    ours = streamed(MeanDistance(renormalize=renormalize), q, k, 0.5, kernel=kernel)
    attn = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.5, dim=-1).numpy()
    np.testing.assert_allclose(ours.numpy(), float64_distance(attn, LAYOUT, renormalize), rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_mean_distance_oracles(kernel):
    """Identity attention -> 0; uniform attention over a 14×14 grid of 16-px patches -> 116.49 px."""
    layout = TokenLayout(("cls",), (14, 14), 16)
    t = layout.n_tokens
    eye = torch.eye(t).mul(60.0)[None, None]
    assert streamed(MeanDistance(), eye, eye, 1.0, layout, kernel).abs().max() < 1e-3
    zero = torch.zeros(1, 2, t, 4)
    uniform = streamed(MeanDistance(renormalize=True), zero, zero, 1.0, layout, kernel)
    assert torch.allclose(uniform, torch.full((1, 2), 116.49), atol=5e-3)
    unnormalised = streamed(MeanDistance(), zero, zero, 1.0, layout, kernel)  # CLS takes 1/T of each row
    assert torch.allclose(unnormalised, uniform * (t - 1) / t, atol=1e-3)


def test_patch_distances_layout():
    dist = patch_distances(LAYOUT)
    assert dist.shape == (14, 14)
    assert torch.equal(dist[:2], torch.zeros(2, 14)) and torch.equal(dist[:, :2], torch.zeros(14, 2))
    assert dist[LAYOUT.patch_index(0, 0), LAYOUT.patch_index(2, 3)] == pytest.approx(16 * math.hypot(2, 3))
    assert dist[LAYOUT.patch_index(1, 1), LAYOUT.patch_index(1, 2)] == 16


def test_rollout_rows_matches_float64():
    g = torch.Generator().manual_seed(7)
    fused = (torch.randn(5, 2, 14, 14, generator=g) * 3).softmax(-1)
    ours = rollout_rows(fused, LAYOUT)
    np.testing.assert_allclose(ours.double().numpy(), float64_rollout(fused.numpy(), 0), atol=1e-6)
    assert torch.allclose(ours.sum(-1), torch.ones(2), atol=1e-5)


def test_stack_layers_returns_the_recorder_stack_without_copy():
    stack = torch.randn(3, 2, 5, 5)
    assert stack_layers({10: stack[0], 11: stack[1], 12: stack[2]}, [10, 11, 12]) is stack
    swapped = stack_layers({10: stack[1], 11: stack[0], 12: stack[2]}, [10, 11, 12])
    assert swapped is not stack and torch.equal(swapped[0], stack[1])
    loose = [torch.randn(2, 5, 5) for _ in range(3)]
    assert torch.equal(stack_layers(dict(enumerate(loose)), [0, 1, 2]), torch.stack(loose))


def test_attention_block_is_documented_shape(small_blocks):
    q, k = random_qk(batch=1)
    block = collect_blocks(q, k, 1.0)[0]
    assert isinstance(block, AttentionBlock)
    assert block.probs.shape == block.shifted.shape == (1, 3, 3, LAYOUT.n_tokens)
    assert block.log_z.shape == (1, 3, 3)


@pytest.mark.parametrize("batch", [1, 8])
def test_one_query_row_against_strided_keys_equals_float64(batch):
    """The CLS row read head by head from k as the projection leaves it, (B, T, heads·d) viewed as
    (B, heads, T, d), from 2^20 elements on; the small case goes through one matmul. Both against float64."""
    g = torch.Generator().manual_seed(batch)
    heads, t, d = 4, 1370, 48
    q = torch.randn(batch, t, heads * d, generator=g).view(batch, t, heads, d).transpose(1, 2)
    k = torch.randn(batch, t, heads * d, generator=g).view(batch, t, heads, d).transpose(1, 2)
    bias = torch.randn(1, heads, 1, t, generator=g)
    assert not k.is_contiguous() and (k.numel() >= torch_ops._ROW_COPY_ELEMENTS) == (batch == 8)
    for b in (None, bias):
        got = torch_ops.query_row_probs(q[:, :, 0], k, 0.2, b)
        scores = q[:, :, :1].double() @ k.double().transpose(-1, -2) * 0.2 + (0 if b is None else b.double())
        want = scores.softmax(-1)[:, :, 0]
        assert got.shape == (batch, heads, t) and got.dtype == torch.float32
        assert torch.allclose(got.double(), want, atol=1e-6, rtol=0)
