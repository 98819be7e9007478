"""The torch-op kernel: one layer's attention in cache-sized blocks of query rows, reduced with torch ops.

It serves every request, ``RowReducer``s included, on any device, and is the reference the compiled
kernels are tested against. Also the single-row forms (``attention_probs``, ``query_row_probs``) used
where only a CLS or probe row is wanted.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable

import torch

from ..fusion import fuse_heads
from .base import AttentionBlock, LayerRequest, LayerResult

_BLOCK_BYTES = {"cpu": 2 << 20}  # one float32 block of scores: cache-sized on CPU
_DEFAULT_BLOCK_BYTES = 256 << 20  # accelerators: few, large blocks
_ROW_COPY_ELEMENTS = 1 << 20  # from here a strided k is read head by head for one query row (see query_row_probs)
_MIN_BLOCK_ROWS = 64  # fewer query rows make the q·kᵀ and P·V matmuls slow (16 rows: 1.6× the time of 67)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias) in float32: q (B, heads, Tq, d), k (B, heads, T, d), an additive bias
    broadcastable to (B, heads, Tq, T) -> (B, heads, Tq, T)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1)


def query_row_probs(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``attention_probs`` of one query row against every key: q (B, heads, d), k (B, heads, T, d), ``bias``
    broadcastable to (B, heads, 1, T) -> (B, heads, T) in float32.

    A large k that is a view of the projection's (B, T, heads·d) output is read head by head where it lies
    (``_ROW_COPY_ELEMENTS`` and up): ``matmul`` would first copy all of it, which took 9× the product itself
    at DINOv2-L/14@518, batch 8 (107 against 12 ms per layer).
    """
    if k.is_contiguous() or k.numel() < _ROW_COPY_ELEMENTS:
        return attention_probs(q[:, :, None], k, scale, bias)[:, :, 0]
    rows = q.float() * scale
    keys = k.float()
    scores = rows.new_empty(k.shape[:3])
    for head in range(k.shape[1]):
        torch.bmm(keys[:, head], rows[:, head, :, None], out=scores[:, head, :, None])
    if bias is not None:
        scores = (scores[:, :, None] + bias)[:, :, 0]
    return scores.softmax(dim=-1)


def block_shape(batch: int, heads: int, n_tokens: int, device: torch.device) -> tuple[int, int]:
    """(images, query rows) per block so that one (images, heads, rows, T) float32 block stays within
    the device's budget (2 MiB on CPU, where the softmax and the reductions then run in cache), but
    with at least ``_MIN_BLOCK_ROWS`` rows, which at large T outweighs the cache (T = 5330 tokens)."""
    budget = _BLOCK_BYTES.get(device.type, _DEFAULT_BLOCK_BYTES)
    row_bytes = heads * n_tokens * 4
    if row_bytes * n_tokens <= budget:
        return max(1, min(batch, budget // (row_bytes * n_tokens))), n_tokens
    return 1, min(n_tokens, max(1, _MIN_BLOCK_ROWS, budget // row_bytes))


class _BlockWorkers:
    """Python threads that each run torch single-threaded and take whole blocks of one layer (CPU).

    Streaming a layer in cache-sized blocks means many small ops; with torch's own threads each op
    opens an OpenMP parallel region, and on a loaded machine every region waits for a descheduled
    thread (measured: 6× slower at load 7 on 2 cores). Workers set their thread count to 1; the
    process-wide count is restored for threads started later.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threads = torch.get_num_threads()
        ready = threading.Barrier(n + 1)
        for _ in range(n):
            threading.Thread(target=self._serve, args=(ready,), daemon=True, name="vitprobe-blocks").start()
        ready.wait()
        torch.set_num_threads(threads)

    def _serve(self, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        ready.wait()
        while True:
            fn, done = self._jobs.get()
            try:
                fn()
                done.put(None)
            except BaseException as err:  # handed to the caller, re-raised there
                done.put(err)

    def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in every worker at once and wait; re-raise the first error."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.n):
            self._jobs.put((fn, done))
        errors = [err for err in (done.get() for _ in range(self.n)) if err is not None]
        if errors:
            raise errors[0]


_WORKERS: dict[int, _BlockWorkers] = {}


def for_each_block(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    consume: Callable[[AttentionBlock], None],
    values: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Call ``consume`` on every block of softmax(q·kᵀ·scale + bias), q, k (B, heads, T, d), in float32;
    ``bias`` (optional, float32) broadcasts to (B, heads, T, T).

    Blocks follow ``block_shape``; each worker reuses two block buffers, so (B, heads, T, T) is
    never allocated. On CPU the blocks are shared among ``torch.get_num_threads()`` worker
    threads, so ``consume`` may run concurrently and must write only its block's entries.
    With ``values`` v (B, heads, T, d) the attention output softmax(q·kᵀ·scale)·v (B, heads, T, d)
    is computed from the same blocks and returned in float32.
    """
    q = q.to(torch.float32, memory_format=torch.contiguous_format, copy=True).mul_(scale)
    kt = k.to(torch.float32, memory_format=torch.contiguous_format).transpose(-1, -2)
    v = values.to(torch.float32, memory_format=torch.contiguous_format) if values is not None else None
    output = q.new_empty(*q.shape[:3], v.shape[-1]) if v is not None else None
    batch, heads, t, _ = q.shape
    bias = bias.expand(batch, heads, t, t) if bias is not None else None  # a view: no copy
    n_images, n_rows = block_shape(batch, heads, t, q.device)
    spans = [
        (slice(b0, min(b0 + n_images, batch)), slice(r0, min(r0 + n_rows, t)))
        for b0 in range(0, batch, n_images)
        for r0 in range(0, t, n_rows)
    ]
    pending = iter(spans)
    lock = threading.Lock()

    def work() -> None:
        scores = q.new_empty(n_images * heads * n_rows * t)
        probs = torch.empty_like(scores)
        while True:
            with lock:
                span = next(pending, None)
            if span is None:
                return
            images, rows = span
            shape = (images.stop - images.start, heads, rows.stop - rows.start, t)
            size = math.prod(shape)
            s = torch.matmul(q[images, :, rows], kt[images], out=scores[:size].view(shape))
            if bias is not None:
                s.add_(bias[images, :, rows])
            p = torch.softmax(s, dim=-1, out=probs[:size].view(shape))  # one fused pass per row
            consume(AttentionBlock(images, rows, p, s))
            if v is not None:
                output[images, :, rows] = torch.matmul(p, v[images])

    workers = min(torch.get_num_threads(), len(spans)) if q.device.type == "cpu" else 1
    if workers > 1:
        if workers not in _WORKERS:
            _WORKERS[workers] = _BlockWorkers(workers)
        _WORKERS[workers].run(work)
    else:
        work()
    return output


def attend(
    q: torch.Tensor, k: torch.Tensor, scale: float, request: LayerRequest, values: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> LayerResult:
    """One layer's ``request`` from q, k (B, heads, T, d) as they enter the softmax, the additive ``bias``
    (broadcastable to (B, heads, T, T)) and, with ``values`` (B, heads, T, dv), the output P·V."""
    batch, heads, t, _ = q.shape
    cls = request.cls_index
    result = LayerResult("torch")
    if cls is not None:
        result.cls = q.new_empty(batch, heads, t, dtype=torch.float32)
    if request.full:
        result.full = q.new_empty(batch, heads, t, t, dtype=torch.float32)
    allocate_statistics(request, result, (batch, heads, t), q.device)

    def consume(block: AttentionBlock) -> None:
        if cls is not None and block.rows.start <= cls < block.rows.stop:
            result.cls[block.images] = block.probs[:, :, cls - block.rows.start]
        for how, out in request.fuse.items():
            out[block.images, block.rows] = fuse_heads(block.probs, how, dim=1)
        if result.full is not None:
            result.full[block.images, :, block.rows] = block.probs
        block_statistics(block, request, result)
        for reducer in request.block_reducers:
            reducer.update(block)

    result.output = for_each_block(q, k, scale, consume, values, bias)
    return result


def from_probs(probs: torch.Tensor, request: LayerRequest) -> LayerResult:
    """One layer's ``request`` from its attention probabilities (B, heads, T, T) float32 themselves, for
    attention that is no single softmax of q·kᵀ over the sequence (TimeSformer's divided attention written
    in the joint token order); ``RowReducer``s get the whole matrix as one block."""
    batch, heads, t, _ = probs.shape
    result = LayerResult("torch")
    if request.cls_index is not None:
        result.cls = probs[:, :, request.cls_index].clone()
    for how, out in request.fuse.items():
        out.copy_(fuse_heads(probs, how, dim=1))
    if request.full:
        result.full = probs
    allocate_statistics(request, result, (batch, heads, t), probs.device)
    # zero probabilities get a finite log, so 0·log 0 counts 0 in the entropy
    scores = probs.clamp_min(torch.finfo(torch.float32).tiny).log()
    block = AttentionBlock(slice(0, batch), slice(0, t), probs, scores)
    block_statistics(block, request, result)
    for reducer in request.block_reducers:
        reducer.update(block)
    return result


def allocate_statistics(request: LayerRequest, result: LayerResult, shape: tuple[int, int, int],
                        device: torch.device) -> None:
    """Empty (B, heads, T) float32 tensors in ``result`` for every per-row statistic of ``request``."""
    if request.entropy:
        result.entropy = torch.empty(shape, device=device)
    result.dots = {name: torch.empty(shape, device=device) for name in request.dots}
    result.masses = {start: torch.empty(shape, device=device) for start in request.masses}


def block_statistics(block: AttentionBlock, request: LayerRequest, result: LayerResult) -> None:
    """Write the per-row statistics of ``block``'s rows into ``result`` (allocated by ``allocate_statistics``).

    Entropy is read from the scores the softmax already shifted, H = log Σ exp(s − m) − Σ p·(s − m) (one
    dot per row, no logarithm per element); a weighted row sum is one float32 dot of T terms per row (a
    batched matmul, 4× faster than ``vecdot``).
    """
    where = (block.images, slice(None), block.rows)
    if request.entropy:
        result.entropy[where] = block.log_z - torch.linalg.vecdot(block.probs, block.shifted)
    for name, weights in request.dots.items():
        result.dots[name][where] = torch.einsum("bhrt,rt->bhr", block.probs, weights[block.rows])
    for start in request.masses:
        result.masses[start][where] = block.probs[..., start:].sum(dim=-1)
