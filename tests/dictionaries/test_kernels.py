"""Sparse TopK kernels equal the dense reference: outputs, indices and every gradient."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sparsecircuits.dictionaries import cpu_topk, kernels
from sparsecircuits.dictionaries.squared_error import squared_sum
from sparsecircuits.errors import SparseCircuitsError
from testkit import torch_threads


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """max |actual - expected| <= tol * max |expected| (float32 sums in another order differ by ulps)."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert float((actual - expected).abs().max() / scale) <= tol


def _inputs(n=20, d_in=10, d_sae=40, d_out=7, dtype=torch.float64):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).requires_grad_(True)  # noqa: E731
    return make(n, d_in), make(d_in, d_sae), make(d_sae), make(d_sae, d_out)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("with_aux", [False, True])
@pytest.mark.parametrize("n", [20, 600])  # 600 rows: three encoder chunks of at most 256
def test_sparse_encode_decode_match_dense(signed: bool, with_aux: bool, n: int) -> None:
    results = []
    for encode, decode in (
        (kernels.topk_encode, kernels.sparse_decode),
        (kernels.topk_encode_dense, kernels.dense_decode),
    ):
        x, W_enc, b_enc, W_dec = _inputs(n=n, dtype=torch.float32)
        aux_mask = (torch.arange(40) % 3 == 0) if with_aux else None
        codes = encode(
            x, W_enc, b_enc, 5, aux_mask=aux_mask, aux_k=6 if with_aux else 0, signed=signed
        )
        out = decode(codes.values, codes.indices, W_dec)
        loss = out.pow(2).sum() + out.sum()
        if with_aux:
            assert codes.aux_values is not None and codes.aux_indices is not None
            assert bool(aux_mask[codes.aux_indices].all())
            loss = loss + decode(codes.aux_values, codes.aux_indices, W_dec).pow(2).sum()
        loss.backward()
        results.append((codes, out, [t.grad for t in (x, W_enc, b_enc, W_dec)]))
    (sparse_codes, sparse_out, sparse_grads), (dense_codes, dense_out, dense_grads) = results
    assert torch.equal(sparse_codes.indices, dense_codes.indices)
    assert torch.equal(sparse_codes.values, dense_codes.values)
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-5, atol=1e-5)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads, strict=True):
        assert_close_relative(sparse_grad, dense_grad)


def test_topk_keeps_exactly_k_and_signed_keeps_signs() -> None:
    x, W_enc, b_enc, _ = _inputs()
    pre = torch.addmm(b_enc, x, W_enc).detach()
    codes = kernels.topk_encode(x, W_enc, b_enc, 5)
    assert codes.indices.shape == (20, 5)
    expected = pre.topk(5, dim=1).values.relu()
    torch.testing.assert_close(codes.values.sort(dim=1).values, expected.sort(dim=1).values)
    signed = kernels.topk_encode(x, W_enc, b_enc, 5, signed=True)
    expected_abs = pre.abs().topk(5, dim=1).values
    torch.testing.assert_close(
        signed.values.abs().sort(dim=1).values, expected_abs.sort(dim=1).values
    )
    assert bool((signed.values == pre.gather(1, signed.indices)).all())


def test_gradcheck_sparse_encoder() -> None:
    x, W_enc, b_enc, W_dec = _inputs(n=4, d_in=3, d_sae=8, d_out=2)
    aux_mask = torch.tensor([True, False] * 4)

    def fn(x, W_enc, b_enc, W_dec):  # type: ignore[no-untyped-def]
        codes = kernels.topk_encode(x, W_enc, b_enc, 2, aux_mask=aux_mask, aux_k=2)
        return kernels.sparse_decode(codes.values, codes.indices, W_dec) + kernels.sparse_decode(
            codes.aux_values, codes.aux_indices, W_dec
        )

    assert torch.autograd.gradcheck(fn, (x, W_enc, b_enc, W_dec))


def test_to_dense_places_values() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    indices = torch.tensor([[0, 3], [2, 1]])
    dense = kernels.to_dense(values, indices, 4)
    assert torch.equal(dense, torch.tensor([[1.0, 0, 0, 2.0], [0, 0, 3.0, 0]]))


def test_chunked_selection_equals_whole_batch_topk() -> None:
    x, W_enc, b_enc, _ = _inputs(n=2500, d_in=16, d_sae=64, dtype=torch.float32)
    with torch.no_grad():
        codes = kernels.topk_encode(x, W_enc, b_enc, 6)
        whole = torch.addmm(b_enc, x, W_enc).topk(6, dim=-1).indices
    assert kernels.encode_rows(2500, 64) < 2500
    assert kernels.encode_rows(2500, 64, "cuda") == 2500  # accelerators take the whole batch
    assert torch.equal(codes.indices.sort(-1).values, whole.sort(-1).values)


@pytest.fixture
def bf16_selection():
    previous = kernels.set_topk_selection("bf16")
    yield
    kernels.set_topk_selection(previous)


@pytest.mark.parametrize("with_aux", [False, True])
def test_verified_bf16_selection_equals_the_fp32_top_k(bf16_selection, with_aux: bool) -> None:
    """The bf16-candidate selection gives the fp32 top-k (same indices per row), values equal to
    fp32 rounding, and the dense reference's gradients."""
    results = []
    for encode, decode in (
        (kernels.topk_encode, kernels.sparse_decode),
        (kernels.topk_encode_dense, kernels.dense_decode),
    ):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(600, 32, generator=gen).requires_grad_(True)
        W_enc = (torch.randn(32, 512, generator=gen) / 6).requires_grad_(True)
        b_enc = (torch.randn(512, generator=gen) * 0.1).requires_grad_(True)
        W_dec = torch.randn(512, 24, generator=gen).requires_grad_(True)
        assert kernels._bf16_selection(x, W_enc, 8, signed=False)
        aux_mask = (torch.arange(512) % 5 == 0) if with_aux else None
        codes = encode(x, W_enc, b_enc, 8, aux_mask=aux_mask, aux_k=6 if with_aux else 0)
        out = decode(codes.values, codes.indices, W_dec)
        loss = out.pow(2).sum()
        if with_aux:
            assert codes.aux_values is not None and codes.aux_indices is not None
            loss = loss + decode(codes.aux_values, codes.aux_indices, W_dec).pow(2).sum()
        loss.backward()
        results.append((codes, out, [t.grad for t in (x, W_enc, b_enc, W_dec)]))
    (fast, fast_out, fast_grads), (ref, ref_out, ref_grads) = results
    order_fast, order_ref = fast.indices.argsort(1), ref.indices.argsort(1)
    assert torch.equal(fast.indices.gather(1, order_fast), ref.indices.gather(1, order_ref))
    torch.testing.assert_close(
        fast.values.gather(1, order_fast), ref.values.gather(1, order_ref), rtol=1e-5, atol=1e-6
    )
    if with_aux:
        assert torch.equal(fast.aux_indices.sort(1).values, ref.aux_indices.sort(1).values)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-5)
    for fast_grad, ref_grad in zip(fast_grads, ref_grads, strict=True):
        assert_close_relative(fast_grad, ref_grad)


@pytest.mark.parametrize("selection", ["fp32", "bf16"])
@pytest.mark.parametrize("every", [4, 5])  # 128 dead latents, or 103 (padded to 128 in bf16)
def test_auxk_selection_takes_the_dense_references_latents(selection: str, every: int) -> None:
    """AuxK's fast selection (the numba top-k over the dead columns, padded with -inf columns on
    the bf16 path) picks the dense reference's latents with its values, on both selection paths,
    where the dead count fills the numba kernel's segments and where it does not."""
    previous = kernels.set_topk_selection(selection)
    try:
        gen = torch.Generator().manual_seed(every)
        x = torch.randn(600, 32, generator=gen)
        W_enc, b_enc = torch.randn(32, 512, generator=gen) / 6, torch.randn(512, generator=gen)
        aux_mask = torch.arange(512) % every == 0
        assert kernels._bf16_selection(x, W_enc, 8, signed=False) == (selection == "bf16")
        fast = kernels.topk_encode(x, W_enc, b_enc, 8, aux_mask=aux_mask, aux_k=3)
        ref = kernels.topk_encode_dense(x, W_enc, b_enc, 8, aux_mask=aux_mask, aux_k=3)
    finally:
        kernels.set_topk_selection(previous)
    assert fast.aux_indices is not None and ref.aux_indices is not None
    assert fast.aux_values is not None and ref.aux_values is not None
    assert bool(aux_mask[fast.aux_indices].all())
    order_fast, order_ref = fast.aux_indices.argsort(1), ref.aux_indices.argsort(1)
    assert torch.equal(fast.aux_indices.gather(1, order_fast), ref.aux_indices.gather(1, order_ref))
    torch.testing.assert_close(
        fast.aux_values.gather(1, order_fast), ref.aux_values.gather(1, order_ref)
    )


@pytest.mark.parametrize("d_in", [31, 32])
def test_verified_selection_takes_the_bias_inside_its_bf16_gemm(d_in: int) -> None:
    """The bf16 GEMM gets the bias as one more input row (`[x, 1, 0…] @ [W; b; 0…]`, an even
    inner width): its scores are `x @ W + b` to bf16 rounding, and with a bias that decides most
    of the ranking the selection is still the fp32 top-k."""
    gen = torch.Generator().manual_seed(d_in)
    x = torch.randn(300, d_in, generator=gen)
    W_enc = torch.randn(d_in, 1024, generator=gen) / 6
    b_enc = 2 * torch.randn(1024, generator=gen)
    selector = kernels._Bf16Selector(W_enc, b_enc, 8, W_enc.t().contiguous())
    assert selector.W_aug.shape[0] % 2 == 0 and selector.W_aug.shape[0] > d_in
    exact = torch.addmm(b_enc, x, W_enc)
    scores = (selector._augmented(x) @ selector.W_aug).float()
    assert float((scores - exact).abs().max()) < 2.0**-7 * float(exact.abs().max())
    values, indices = selector(x)
    expected = exact.topk(8, dim=-1)
    assert torch.equal(indices.sort(1).values, expected.indices.sort(1).values)
    torch.testing.assert_close(values.sort(1).values, expected.values.sort(1).values)


def test_verified_selection_falls_back_to_fp32_on_near_ties() -> None:
    """Columns equal up to 1e-4 cannot be ordered in bf16: the bound check fails those rows,
    they are recomputed in fp32, and the result is still the fp32 top-k."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 16, generator=gen)
    base = torch.randn(16, 1, generator=gen)
    W_enc = base + 1e-4 * torch.randn(16, 256, generator=gen)
    b_enc = torch.zeros(256)
    selector = kernels._Bf16Selector(W_enc, b_enc, 4, W_enc.t().contiguous())
    values, indices = selector(x)
    assert selector.fallback_rows > 0
    expected = torch.addmm(b_enc, x, W_enc).topk(4, dim=-1)
    assert torch.equal(indices.sort(1).values, expected.indices.sort(1).values)
    torch.testing.assert_close(values.sort(1).values, expected.values.sort(1).values)


def test_selection_modes() -> None:
    x, W = torch.randn(8, 4), torch.randn(4, 64)
    previous = kernels.set_topk_selection("auto")
    try:
        assert not kernels._bf16_selection(x, W, 2, signed=False)  # d_sae < 4096: fp32
        kernels.set_topk_selection("bf16")
        assert kernels._bf16_selection(x, W, 2, signed=False)
        assert not kernels._bf16_selection(x, W, 2, signed=True)  # AbsTopK stays fp32
        assert not kernels._bf16_selection(x.double(), W.double(), 2, signed=False)
        kernels.set_topk_selection("fp32")
        assert not kernels._bf16_selection(x, W, 2, signed=False)
        kernels.set_topk_selection("auto")
        if kernels.cpu_has_fast_bf16():  # k 128 only pays at d_sae 65536 and wider
            assert kernels.selection_for(65536, 128, "cpu", torch.float32) == "bf16"
            assert kernels.selection_for(16384, 128, "cpu", torch.float32) == "fp32"
            assert kernels.selection_for(65536, 256, "cpu", torch.float32) == "fp32"
        with pytest.raises(ValueError, match="topk selection"):
            kernels.set_topk_selection("int8")
        kernels._selection = "int8"  # as from a mistyped SPARSECIRCUITS_TOPK_SELECTION
        with pytest.raises(SparseCircuitsError, match="SPARSECIRCUITS_TOPK_SELECTION"):
            kernels.selection_for(16384, 32, "cpu", torch.float32)
    finally:
        kernels.set_topk_selection(previous)


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize(
    ("width", "k"), [(4096, 32), (16384, 32), (4096, 128), (4096, 72), (1000, 7), (512, 64)]
)
def test_row_topk_equals_torch_topk(width: int, k: int, numba: bool) -> None:
    """Both CPU top-k paths (`row_topk`: the numba segment kernel where it applies; the
    strided-block torch ops it falls back to) return exactly torch.topk's elements (random
    rows: no ties; 150 rows: the kernel's scratch is reused across rows and split into tasks)."""
    scores = torch.randn(150, width, generator=torch.Generator().manual_seed(width + k))
    if numba:
        values, indices = kernels.row_topk(scores, k)
        numba_ran = cpu_topk.supports(scores, k)
    else:
        values, indices = kernels.blocked_topk(scores, k)
        numba_ran = False
    expected = scores.topk(k, dim=-1)
    assert torch.equal(indices.sort(1).values, expected.indices.sort(1).values)
    assert torch.equal(values.sort(1).values, expected.values.sort(1).values)
    assert torch.equal(scores.gather(1, indices), values)
    if width == 4096 and k == 32:
        assert numba_ran == numba  # the numba kernel ran, or the strided blocks
        assert kernels._groups(width, k) == 16


@pytest.mark.parametrize("k", [1, 16, 72])
def test_numba_topk_on_bf16_bits_and_ties(k: int) -> None:
    """The numba kernel on bf16 rows (compared through integer keys of the bits, negatives and
    zeros included) keeps torch.topk's values; with many equal values it still returns k
    distinct positions holding the k largest values."""
    g = torch.Generator().manual_seed(k)
    scores = (torch.randn(130, 2048, generator=g) * 3).to(torch.bfloat16)  # bf16: many ties
    scores[0] = -scores[0].abs()  # an all-negative row
    scores[1, :] = 0.0
    scores[1, 5] = -0.0
    scores[70] = -scores[70].abs()  # the same in the kernel's second task of rows
    values, indices = cpu_topk.row_topk(scores, k)
    assert values.dtype == torch.float32
    expected = scores.float().topk(k, dim=-1).values
    assert torch.equal(values.sort(1).values, expected.sort(1).values)
    assert torch.equal(scores.float().gather(1, indices), values)
    assert all(len(set(row.tolist())) == k for row in indices)


def test_numba_gather_dot_matches_torch() -> None:
    """The numba gather-dot (with and without bias) equals the embedding-bag one to rounding."""
    g = torch.Generator().manual_seed(0)
    table, rows = torch.randn(500, 64, generator=g), torch.randn(30, 64, generator=g)
    idx, bias = torch.randint(0, 500, (30, 9), generator=g), torch.randn(500, generator=g)
    expected = (table[idx] * rows[:, None]).sum(-1)
    torch.testing.assert_close(kernels.gather_dot(table, idx, rows), expected)
    torch.testing.assert_close(kernels.gather_dot(table, idx, rows, bias), expected + bias[idx])
    torch.testing.assert_close(
        kernels._gather_dot_torch(table, idx, rows) + bias[idx], expected + bias[idx]
    )


@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_fused_input_bias_gradients_match_dense(x_needs_grad: bool) -> None:
    """With `b_in` handed to the kernel, its gradient (W_enc @ grad_b_enc when x is data, the
    input gradient's row sum otherwise) equals the dense reference's."""
    grads = []
    for encode in (kernels.topk_encode, kernels.topk_encode_dense):
        x, W_enc, b_enc, W_dec = _inputs(n=300, dtype=torch.float32)
        x = x.detach().requires_grad_(x_needs_grad)
        b_in = torch.randn(10, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        codes = encode(x, W_enc, b_enc, 5, aux_mask=torch.arange(40) % 4 == 0, aux_k=3, b_in=b_in)
        assert codes.aux_values is not None and codes.aux_indices is not None
        loss = kernels.sparse_decode(codes.values, codes.indices, W_dec).pow(2).sum()
        loss = loss + kernels.sparse_decode(codes.aux_values, codes.aux_indices, W_dec).sum()
        loss.backward()
        grads.append([b_in.grad, W_enc.grad, b_enc.grad] + ([x.grad] if x_needs_grad else []))
    for fast, ref in zip(*grads, strict=True):
        assert_close_relative(fast, ref)


def test_bf16_order_key_orders_like_the_floats() -> None:
    """The integer key of bf16 bits (Python form of the kernel's key) sorts like the values."""
    from sparsecircuits.dictionaries import _numba_kernels

    values = torch.tensor([-3.5, -1.0, -0.0, 0.0, 1e-3, 2.0, 7.25], dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy().view("uint16")
    keys = [_numba_kernels.order_key(b) for b in bits]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert _numba_kernels.order_key(1.5) == 1.5


def test_numba_topk_rows_of_nans_give_valid_indices() -> None:
    """A NaN row (a diverged run) must not index out of range in the decoder."""
    scores = torch.randn(4, 1024)
    scores[2] = float("nan")
    values, indices = cpu_topk.row_topk(scores, 8)
    assert int(indices.min()) >= 0 and int(indices.max()) < 1024
    assert torch.equal(values[0].sort().values, scores[0].topk(8).values.sort().values)
    values, indices = cpu_topk.row_topk(scores.to(torch.bfloat16), 8)  # the bf16 kernel
    assert int(indices.min()) >= 0 and int(indices.max()) < 1024
    assert len(set(indices[2].tolist())) == 8


def test_encoder_chunks_follow_d_sae() -> None:
    """1024-row chunks up to d_sae 16k, 256 rows beyond; fewer rows than that: one chunk."""
    assert kernels.encode_rows(4096, 4096) == 1024
    assert kernels.encode_rows(4096, 65536) == 256
    assert kernels.encode_rows(300, 4096) == 300


def test_dense_reference_runs_topk_encode_and_sparse_decode_densely() -> None:
    """Inside `dense_reference()` the sparse entry points give the references' results (their
    autograd graph: no custom backward); outside, the sparse kernels again."""
    x, W_enc, b_enc, W_dec = _inputs(dtype=torch.float32)
    with kernels.dense_reference():
        codes = kernels.topk_encode(x, W_enc, b_enc, 5)
        out = kernels.sparse_decode(codes.values, codes.indices, W_dec)
    dense = kernels.topk_encode_dense(x, W_enc, b_enc, 5)
    assert torch.equal(codes.values, dense.values) and torch.equal(codes.indices, dense.indices)
    assert "TopKEncode" not in type(codes.values.grad_fn).__name__
    assert "SparseDecode" not in type(out.grad_fn).__name__
    assert not kernels._dense_reference
    sparse = kernels.topk_encode(x, W_enc, b_enc, 5)
    assert "TopKEncode" in type(sparse.values.grad_fn).__name__


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize(("n", "c", "d_sae", "d"), [(300, 8, 1000, 24), (64, 3, 37, 5)])
def test_scatter_outer_kernel_equals_dense_product(
    transposed: bool, n: int, c: int, d_sae: int, d: int
) -> None:
    """The numba weight-gradient kernel is `S.T @ rows` for the sparse codes `S [n, d_sae]`
    (repeated latents in a row summed; latents that never occur give zero rows; widths that
    are not a multiple of its 16-latent tiles), fp32 against a float64 dense product."""
    gen = torch.Generator().manual_seed(n + c)
    indices = torch.randint(0, d_sae - 3, (n, c), generator=gen)  # the last 3 latents unused
    indices[:, -1] = indices[:, 0]  # a latent twice in each row (main + AuxK codes can overlap)
    weights = torch.randn(n, c, generator=gen)
    rows = torch.randn(n, d, generator=gen)
    assert cpu_topk.supports_scatter(indices, weights, rows)
    out = kernels._scatter_outer(indices, weights, rows, d_sae, transposed=transposed)
    dense = kernels.to_dense(weights.double(), indices, d_sae)
    expected = dense.t() @ rows.double()
    if transposed:
        expected = expected.t()
        assert out.is_contiguous()
    assert out.shape == expected.shape
    assert_close_relative(out.double(), expected, tol=1e-6)
    assert bool((out.reshape(-1) if not transposed else out.t().reshape(-1)).isfinite().all())
    unused = out[-3:] if not transposed else out[:, -3:]
    assert bool((unused == 0).all())


def test_scatter_outer_flat_entries_equal_dense_product() -> None:
    """With flat (CSR) entries and `row_of`, as the row-sparse ReLU/JumpReLU step calls it: rows
    with different numbers of entries, empty rows, zero weights (JumpReLU's window entries),
    fp32 against a float64 dense product."""
    gen = torch.Generator().manual_seed(5)
    n, d_sae, d = 90, 300, 17
    counts = torch.randint(0, 12, (n,), generator=gen)
    counts[::7] = 0
    row_of = torch.repeat_interleave(torch.arange(n), counts)
    cols = torch.randint(0, d_sae, (int(counts.sum()),), generator=gen)
    weights = torch.randn(cols.shape[0], generator=gen)
    weights[::3] = 0.0
    rows = torch.randn(n, d, generator=gen)
    out = cpu_topk.scatter_outer(cols, weights, rows, d_sae, row_of=row_of)
    dense = torch.zeros(n, d_sae, dtype=torch.float64).index_put_(
        (row_of, cols), weights.double(), accumulate=True
    )
    assert_close_relative(out.double(), dense.t() @ rows.double(), tol=1e-6)


def test_scatter_outer_rejects_out_of_range_indices() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        cpu_topk.scatter_outer(torch.tensor([[0, 5]]), torch.ones(1, 2), torch.ones(1, 3), 5)


def test_addmm_into_reused_buffer_gives_addmm_bits() -> None:
    """The encoder chunks' GEMM into a reused scratch buffer equals `torch.addmm` (or `mm`
    without a bias) bit for bit (the dense reference allocates), for fp32 and bf16 and a
    shorter last chunk."""
    gen = torch.Generator().manual_seed(3)
    W, b = torch.randn(40, 700, generator=gen), torch.randn(700, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        name = f"test.addmm_into.{dtype}"
        pointers = set()
        for rows in (64, 64, 17):
            x = torch.randn(rows, 40, generator=gen).to(dtype)
            got = kernels._addmm_into(b.to(dtype), x, W.to(dtype), name)
            assert torch.equal(got, torch.addmm(b.to(dtype), x, W.to(dtype)))
            pointers.add(got.data_ptr())
            got = kernels._addmm_into(None, x, W.to(dtype), name)
            assert torch.equal(got, x @ W.to(dtype))
        assert len(pointers) == 1  # allocated once, reused


def test_scratch_buffers_made_under_inference_mode_serve_a_later_train_step() -> None:
    """A TopK forward under `torch.inference_mode()` makes the step buffers; the train step
    after it, outside inference mode, writes into the same ones."""
    from sparsecircuits.dictionaries.scratch import release

    release()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 16, generator=gen)
    W_enc = torch.randn(16, 256, generator=gen).requires_grad_(True)
    b_enc = torch.zeros(256, requires_grad=True)
    with torch.inference_mode():
        kernels.topk_encode(x, W_enc, b_enc, 4)
    codes = kernels.topk_encode(x, W_enc, b_enc, 4)
    codes.values.sum().backward()
    assert W_enc.grad is not None and not W_enc.grad.is_inference()


def test_scratch_buffers_are_kept_per_name_and_thread() -> None:
    """`scratch` hands back the same memory for the same name while the shape fits (the leading
    rows when fewer are asked for), new memory for another name, width or dtype, and other
    memory on another thread; `release` drops this thread's buffers."""
    import threading
    import weakref

    from sparsecircuits.dictionaries.scratch import release, scratch

    first = scratch("test.a", (8, 5))
    assert scratch("test.a", (3, 5)).data_ptr() == first.data_ptr()
    assert scratch("test.a", (3, 5)).shape == (3, 5)
    assert scratch("test.b", (8, 5)).data_ptr() != first.data_ptr()
    wider = scratch("test.a", (8, 6))
    assert wider.shape == (8, 6) and scratch("test.a", (8, 6)).data_ptr() == wider.data_ptr()
    assert scratch("test.a", (8, 6), torch.bfloat16).dtype == torch.bfloat16
    taller = scratch("test.a", (16, 6), torch.bfloat16)
    assert taller.shape == (16, 6)
    other: list[int] = []
    thread = threading.Thread(
        target=lambda: other.append(scratch("test.a", (16, 6), torch.bfloat16).data_ptr())
    )
    thread.start()
    thread.join()
    assert other[0] != taller.data_ptr()
    held = weakref.ref(taller.untyped_storage())
    del first, wider, taller
    release()
    assert held() is None  # nothing keeps the freed buffers


def test_verified_selection_widens_before_falling_back() -> None:
    """When the first `k + margin` bf16 candidates cannot certify a row, the selector verifies
    it again on twice as many (then more) candidates; the result is the fp32 top-k either way,
    and rows need the fp32 recomputation only beyond the widest candidate set."""
    gen = torch.Generator().manual_seed(11)
    d_in, d_sae, k = 16, 4096, 4
    base = torch.randn(d_in, 1, generator=gen)
    cluster = base + 1e-2 * torch.randn(d_in, 50, generator=gen)  # 50 latents within bf16 error
    W_enc = torch.cat([cluster, 0.1 * torch.randn(d_in, d_sae - 50, generator=gen)], 1)
    b_enc = torch.zeros(d_sae)
    x = base.t() + 0.1 * torch.randn(64, d_in, generator=gen)
    selector = kernels._Bf16Selector(W_enc, b_enc, k, W_enc.t().contiguous())
    assert selector.n_candidates < 50 < 2 * selector.n_candidates
    values, indices = selector(x)
    assert selector.widened_rows == 64  # no row certified by 37 candidates, all by 74
    assert selector.fallback_rows == 0
    expected = torch.addmm(b_enc, x, W_enc).topk(k, dim=-1)
    assert torch.equal(indices.sort(1).values, expected.indices.sort(1).values)
    torch.testing.assert_close(values.sort(1).values, expected.values.sort(1).values)


def test_decoder_row_kernels_equal_torch_reference() -> None:
    """The one-pass numba row kernels behind `remove_parallel_grad` and `normalize_rows` give
    the torch formulas' results to fp32 precision (a zero row included: its norm counts as eps)."""
    from sparsecircuits.dictionaries import base

    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(1000, 48, generator=gen)
    weight[7] = 0.0
    grad = torch.randn(1000, 48, generator=gen)
    assert cpu_topk.supports_rows(weight, grad)
    eps = torch.finfo(torch.float32).eps
    w64, g64 = weight.double(), grad.double()
    unit = w64 / w64.norm(dim=1, keepdim=True).clamp_min(eps)
    expected_grad = g64 - (g64 * unit).sum(1, keepdim=True) * unit
    param = torch.nn.Parameter(weight.clone())
    param.grad = grad.clone()
    base.remove_parallel_grad(param)
    assert_close_relative(param.grad.double(), expected_grad, tol=1e-6)
    assert float((param.grad.double() * unit).sum(1).abs().max()) < 1e-5  # orthogonal to rows
    base.normalize_rows(param.data)
    expected = w64 / w64.norm(dim=1, keepdim=True).clamp_min(eps)
    assert_close_relative(param.data.double(), expected, tol=1e-6)
    assert bool((param.data[7] == 0).all())


def test_take_gathers_like_indexing_with_a_backward_that_repeats_bit_for_bit() -> None:
    """`kernels.take(values, index)` is `values[index]`; its gradient (summed over 140,000
    entries into 2,048 latents, on two threads) has the same bits on every run."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2048, generator=gen, requires_grad=True)
    index = torch.randint(0, 2048, (1000, 140), generator=gen)
    weights = torch.randn(1000, 140, generator=gen)
    assert torch.equal(kernels.take(values, index), values[index])
    rows = torch.randn(2048, 3, generator=gen)  # rows of a table, as matching pursuit's atoms
    assert torch.equal(kernels.take(rows, index), rows[index])
    grads = []
    with torch_threads(2):
        for _ in range(5):
            values.grad = None
            (kernels.take(values, index) * weights).sum().backward()
            grads.append(values.grad.clone())
    expected = torch.zeros(2048, dtype=torch.float64).index_add_(
        0, index.reshape(-1), weights.reshape(-1).double()
    )
    torch.testing.assert_close(grads[0].double(), expected, rtol=1e-5, atol=1e-4)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


@pytest.mark.parametrize("dim", [None, (0, 2), (1,)])
def test_squared_sum_has_the_bits_of_pow_sum_forward_and_backward(dim: Any) -> None:
    """`squared_sum` computes `error.pow(2).sum(dim)` and, in one pass, autograd's gradient of
    it: the same bits for an upstream gradient that is not a power of two."""
    gen = torch.Generator().manual_seed(1)
    error = torch.randn(64, 3, 40, generator=gen) * 7
    mine, reference = error.clone().requires_grad_(), error.clone().requires_grad_()
    out = squared_sum(mine, dim)
    expected = reference.pow(2).sum() if dim is None else reference.pow(2).sum(dim=dim)
    assert torch.equal(out, expected)
    upstream = torch.rand(out.shape, generator=gen) / 3 + 0.1
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.equal(mine.grad, reference.grad)
