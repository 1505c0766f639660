"""Distance correlation (dCor), once: the attacks' leakage measures and NoPeek's loss.

Székely, Rizzo & Bakirov 2007, the biased V-statistic estimator that ``dcor.distance_correlation``
computes by default. For n paired observations with pairwise distance matrices
a_ij = |x_i - x_j| and b_ij = |y_i - y_j| (Euclidean for vectors):

    dCov^2(x, y) = mean_ij(A_ij B_ij),  A = a - row mean - column mean + grand mean (B likewise)
    dCor(x, y)   = sqrt(dCov^2(x, y) / sqrt(dCov^2(x, x) dCov^2(y, y)))   (0 when a variance is 0)

Because a double-centred matrix has zero row and column sums, mean(A B) needs only the raw
matrices: mean(a b) + mean(a) mean(b) - 2 mean_i(rowmean(a)_i rowmean(b)_i). That is the one
double-centring here (:func:`dcor_from_distances`, batched over any leading dimensions); it is
made of differentiable torch operations, so NoPeek's loss (:func:`distance_correlation`) is the
same function as the measures, with gradients.

The measures (:func:`dcor_per_channel`, :func:`dcor_samples`, :func:`dcor_batches`) work in
float64; the bias-corrected dCor^2 (Székely & Rizzo 2014) is :func:`u_dcor_sqr_from_distances`.
"""

from __future__ import annotations

import numpy as np
import torch

from splitpriv.io import torch_threads

_CHUNK = 128  # beats per chunk of the per-channel dCor: the (chunk, C, L, L) block stays in cache
_TINY = 1e-24  # inside the square root of a distance: distance 0 gets gradient 0, not NaN
#: Rows x dimensions up to which :func:`pairwise_distances` without a gradient takes the
#: differences (n, n, d): 4 M float64 elements, 32 MiB.
_DIFF_MAX_ELEMENTS = 1 << 22


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the flattened rows. Shape: (n, ...) -> (n, n), x's dtype.

    Three ways, one definition. With a gradient: :class:`_GradDistances` (the float64 Gram matrix,
    an analytic backward). Without one, in float32, or for n^2 d up to 4 M elements: from the
    differences, sqrt(sum (x_i - x_j)^2 + 1e-24), equal rows exactly 0 apart. Otherwise (the
    float64 measures over large batches): the matrix-product form |u|^2 + |v|^2 - 2 u.v in O(n^2)
    memory with an exact zero diagonal; in float64 its rounding error is far below the 1e-6
    tolerance the tests hold the dCor to.
    """
    return _distances64(x).to(x.dtype) if x.requires_grad else _distances(x)


def _distances64(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) -> (n, n) float64 distances from :class:`_GradDistances` (with x's gradient)."""
    x = x.reshape(len(x), -1)
    if x.requires_grad:
        return _GradDistances.apply(x)
    return _GradDistances.forward(x)[0]


def _distances(x: torch.Tensor) -> torch.Tensor:
    """:func:`pairwise_distances` without a gradient, in x's dtype."""
    x = x.reshape(len(x), -1)
    n, d = x.shape
    if x.dtype != torch.float64 or n * n * d <= _DIFF_MAX_ELEMENTS:
        diff = x[:, None, :] - x[None, :, :]  # (n, n, d)
        return torch.sqrt(diff.pow(2).sum(-1) + _TINY)
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_(min=0)
    d2.fill_diagonal_(0)
    return d2.sqrt_()


#: Pairs whose squared distance is at most this fraction of |x_i|^2 + |x_j|^2 count as equal
#: rows in :class:`_GradDistances` (distance 0, gradient 0): below float64's resolution of the
#: Gram form for float32 inputs, i.e. rows less than 1e-6 apart relative to their norms.
_COINCIDENT = 1e-12


class _GradDistances(torch.autograd.Function):
    """(n, d) -> (n, n) float64 Euclidean distances with an analytic gradient (NoPeek's loss).

    Forward: from the float64 Gram matrix G = x x^T, d2_ij = G_ii + G_jj - 2 G_ij, and
    D = sqrt(d2 + 1e-24) with coincident rows (:data:`_COINCIDENT`, the diagonal among them) set
    to d2 = 0. Backward, for an upstream gradient g = dL/dD: dD_ij / dx_i = (x_i - x_j) / D_ij, so
    with W = (g + g^T) / D (0 on coincident pairs) dL/dx = rowsum(W) x - W x: two (n, n) x (n, d)
    products. Autograd through the (n, n, d) differences cost 2.0 ms for a NoPeek batch
    (32 beats x 512 activations) here, this 0.2 ms; the values agree to float64 rounding.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x64 = x.double()
        gram = x64 @ x64.T  # (n, n)
        sq = gram.diagonal()
        norms = sq[:, None] + sq[None, :]
        d2 = norms - 2 * gram
        apart = d2 > _COINCIDENT * norms
        dist = torch.sqrt(torch.where(apart, d2, 0.0) + _TINY)
        return dist, apart

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        dist, apart = output
        ctx.save_for_backward(inputs[0], dist, apart)
        ctx.mark_non_differentiable(apart)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        x, dist, apart = ctx.saved_tensors
        w = torch.where(apart, (grad + grad.T) / dist, 0.0)  # (n, n)
        x64 = x.double()
        return (w.sum(1, keepdim=True) * x64 - w @ x64).to(x.dtype)

    @classmethod
    def apply(cls, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().apply(x)[0]


def pairwise_euclidean(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(n, ...) -> (n, n) Euclidean distances of the flattened rows, float64
    (:func:`pairwise_distances` of x as float64)."""
    return pairwise_distances(torch.as_tensor(x).to(torch.float64))


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation, differentiable in both arguments (NoPeek's loss).

    Rows are samples; every other dimension is flattened.

    Shape:
        x: (n, ...), z: (n, ...) -> scalar in [0, 1].

    Example (worked by hand): z = 2 x + 1 for any non-constant x gives exactly 1.
    """
    if len(x) != len(z):
        raise ValueError(f"x and z need the same number of rows, got {len(x)} and {len(z)}")
    # the sums cancel: float32 sums lose ~5e-7 of the dCor, float64 ones nothing (a batch's
    # (n, n) matrices are small)
    a, b = _distances64(x), _distances64(z)
    return dcor_from_distances(a, b).to(torch.promote_types(x.dtype, z.dtype))


def _dcor_from_sums(
    cross: torch.Tensor,
    a_row: torch.Tensor,
    b_row: torch.Tensor,
    a_sq: torch.Tensor,
    b_sq: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """dCor from sums of the raw distance matrices a, b (n x n), without centring them.

    Args:
        cross: sum_ij a_ij b_ij.  a_row, b_row: (..., n) row sums.  a_sq, b_sq: sum_ij a_ij^2.
    """
    a_all, b_all = a_row.sum(-1) / n**2, b_row.sum(-1) / n**2
    a_row, b_row = a_row / n, b_row / n

    def dcov2(pq, p_row, q_row, p_all, q_all):
        # mean(A B) with A, B double-centred = mean(a b) + mean(a) mean(b) - 2 mean_i(ā_i b̄_i)
        return pq / n**2 + p_all * q_all - 2 * (p_row * q_row).sum(-1) / n

    cov = dcov2(cross, a_row, b_row, a_all, b_all)
    var_a = dcov2(a_sq, a_row, a_row, a_all, a_all)
    var_b = dcov2(b_sq, b_row, b_row, b_all, b_all)
    den = (var_a * var_b).abs().sqrt()
    r2 = torch.where(den > 0, cov / torch.where(den > 0, den, 1.0), torch.zeros_like(cov))
    # sqrt of 0 has an infinite derivative: r2 <= 0 gives 0 with gradient 0
    return torch.where(r2 > 0, r2, torch.zeros_like(r2)).sqrt()


def dcor_from_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance correlation from pairwise distance matrices (differentiable).

    Shape:
        a: (..., n, n), b: (..., n, n), broadcastable over the leading dimensions.
        returns: the broadcast leading shape.
    """
    return _dcor_from_sums(
        (a * b).sum((-1, -2)), a.sum(-1), b.sum(-1),
        (a * a).sum((-1, -2)), (b * b).sum((-1, -2)), a.shape[-1],
    )


def _abs_diff_row_sums(v: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (..., n): sum_j |v_i - v_j|, in O(n log n) by sorting.

    For the k-th smallest value s_k (k = 1..n) with prefix sums P_k and total T:
    sum_j |s_k - s_j| = (k - 1) s_k - P_{k-1} + (T - P_k) - (n - k) s_k.
    """
    n = v.shape[-1]
    s, order = v.sort(-1)
    p = s.cumsum(-1)
    k = torch.arange(1, n + 1, dtype=v.dtype)
    r = (2 * k - 1 - n) * s - (p - s) - p + p[..., -1:]
    return torch.empty_like(r).scatter_(-1, order, r)


def _abs_diff_sq_sum(v: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (...): sum_ij (v_i - v_j)^2 = 2 n sum v^2 - 2 (sum v)^2."""
    n = v.shape[-1]
    return 2 * n * (v * v).sum(-1) - 2 * v.sum(-1) ** 2


def dcor_per_channel(x: torch.Tensor | np.ndarray, acts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The paper's per-beat, per-channel dCor between two series of equal length.

    For every beat b and channel c: dCor between ``x[b]`` and ``acts[b, c]``, each a series of L
    values taken as L one-dimensional observations, as
    ``dcor.distance_correlation(x[b], acts[b, c])``.
    Only sum_ij a_ij b_ij needs the (L, L) matrices; row sums come from sorting and squared sums in
    closed form.

    Shape:
        x: (B, L), acts: (B, C, L). Returns (B, C) float64.
    """
    x = torch.as_tensor(x).to(torch.float64)
    acts = torch.as_tensor(acts).to(torch.float64)
    if x.ndim != 2 or acts.ndim != 3 or x.shape[0] != acts.shape[0] or x.shape[1] != acts.shape[2]:
        raise ValueError(
            f"dcor_per_channel: expected x (B, L) and acts (B, C, L), got {tuple(x.shape)} and "
            f"{tuple(acts.shape)}"
        )
    bsz, c, n = acts.shape
    out = torch.empty(bsz, c, dtype=torch.float64)
    with torch_threads(1):  # many small memory-bound blocks: threads only contend
        for s in range(0, bsz, _CHUNK):
            xs, ys = x[s : s + _CHUNK], acts[s : s + _CHUNK]  # (b, L), (b, C, L)
            a = (xs.unsqueeze(-1) - xs.unsqueeze(-2)).abs_()  # (b, L, L)
            b = (ys.unsqueeze(-1) - ys.unsqueeze(-2)).abs_()  # (b, C, L, L)
            cross = torch.bmm(b.view(len(xs), c, n * n), a.view(len(xs), n * n, 1))[..., 0]
            out[s : s + _CHUNK] = _dcor_from_sums(
                cross,  # (b, C)
                _abs_diff_row_sums(xs).unsqueeze(1),  # (b, 1, L)
                _abs_diff_row_sums(ys),  # (b, C, L)
                _abs_diff_sq_sum(xs).unsqueeze(1),  # (b, 1)
                _abs_diff_sq_sum(ys),  # (b, C)
                n,
            )
    return out


def u_dcor_sqr_from_distances(a: torch.Tensor, b: torch.Tensor) -> float:
    """The bias-corrected squared distance correlation (Székely & Rizzo 2014; U-centred matrices),
    as ``dcor.u_distance_correlation_sqr``: about 0 for independent samples at any n and dimension,
    where the V-statistic dCor of high-dimensional samples is far above 0.

    Shape:
        a, b: (n, n) distance matrices, n > 3.
    """
    n = a.shape[-1]
    if n < 4:
        raise ValueError("the bias-corrected dCor needs at least 4 observations")

    def ucentre(d):
        row = d.sum(-1, keepdim=True)
        u = d - row / (n - 2) - row.transpose(-1, -2) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
        u.fill_diagonal_(0)
        return u

    ua, ub = ucentre(a), ucentre(b)
    cov, var_a, var_b = (ua * ub).sum(), (ua * ua).sum(), (ub * ub).sum()
    den = (var_a * var_b).abs().sqrt()
    return float(cov / den) if den > 0 else 0.0


def dcor_samples(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """dCor between n observations of two (flattened) vectors, as ``dcor.distance_correlation``.

    Shape:
        x: (n, ...), y: (n, ...).
    """
    if len(x) != len(y):
        raise ValueError(f"dcor_samples: {len(x)} observations of x but {len(y)} of y")
    return float(dcor_from_distances(pairwise_euclidean(x), pairwise_euclidean(y)))


def dcor_batches(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    batch_size: int,
    n_batches: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """dCor over random batches of paired rows, each drawn without replacement.

    The NoPeek dCor is a statistic of a batch of n beats; its sampling distribution is estimated
    by redrawing batches from the observed rows. (A bootstrap with replacement would be biased
    upward for this V-statistic: a duplicated beat adds zero distances to both matrices.) Beside
    the V-statistic each batch also gets the bias-corrected dCor^2 (about 0 under independence).

    Shape:
        x: (n, ...), y: (n, ...). Returns {"dcor": (n_batches,), "u_dcor_sqr": (n_batches,)}.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"dcor_batches: {n} rows of x but {len(y)} of y")
    m = min(batch_size, n)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(x).to(torch.float64).reshape(n, -1)
    y = torch.as_tensor(y).to(torch.float64).reshape(n, -1)
    out = {"dcor": np.empty(n_batches), "u_dcor_sqr": np.empty(n_batches)}
    with torch_threads(1):  # many small memory-bound blocks: threads only contend
        for k in range(n_batches):
            idx = torch.from_numpy(np.sort(rng.choice(n, size=m, replace=False)))
            ak, bk = pairwise_euclidean(x[idx]), pairwise_euclidean(y[idx])
            out["dcor"][k] = float(dcor_from_distances(ak, bk))
            out["u_dcor_sqr"][k] = u_dcor_sqr_from_distances(ak, bk) if m > 3 else np.nan
    return out


def u_dcor_sqr_per_channel(x: torch.Tensor | np.ndarray, acts: torch.Tensor | np.ndarray
                           ) -> torch.Tensor:
    """The bias-corrected squared dCor (:func:`u_dcor_sqr_from_distances`) of the paper's
    per-beat, per-channel pairs (:func:`dcor_per_channel`): each beat's L input values against
    each channel's L values, about 0 where they are independent.

    Shape:
        x: (B, L), acts: (B, C, L), L > 3. Returns (B, C) float64.
    """
    x = torch.as_tensor(x).to(torch.float64)
    acts = torch.as_tensor(acts).to(torch.float64)
    if x.ndim != 2 or acts.ndim != 3 or x.shape[0] != acts.shape[0] or x.shape[1] != acts.shape[2]:
        raise ValueError(f"u_dcor_sqr_per_channel: expected x (B, L) and acts (B, C, L), got "
                         f"{tuple(x.shape)} and {tuple(acts.shape)}")
    n = x.shape[1]
    if n < 4:
        raise ValueError("the bias-corrected dCor needs at least 4 observations")
    off_diagonal = 1 - torch.eye(n, dtype=torch.float64)

    def ucentre(d: torch.Tensor) -> torch.Tensor:  # (..., n, n) -> (..., n, n)
        row, col = d.sum(-1, keepdim=True), d.sum(-2, keepdim=True)
        total = d.sum((-1, -2), keepdim=True)
        return (d - row / (n - 2) - col / (n - 2) + total / ((n - 1) * (n - 2))) * off_diagonal

    out = torch.empty(acts.shape[:2], dtype=torch.float64)
    with torch_threads(1):
        for s in range(0, len(x), _CHUNK):
            ua = ucentre((x[s:s + _CHUNK, :, None] - x[s:s + _CHUNK, None, :]).abs())[:, None]
            ys = acts[s:s + _CHUNK]
            ub = ucentre((ys[..., :, None] - ys[..., None, :]).abs())  # (b, C, n, n)
            cov = (ua * ub).sum((-1, -2))
            den = ((ua * ua).sum((-1, -2)) * (ub * ub).sum((-1, -2))).sqrt()
            out[s:s + _CHUNK] = torch.where(den > 0, cov / torch.where(den > 0, den, 1.0), 0.0)
    return out
