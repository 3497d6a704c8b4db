"""The implicit gradient by GMRES: the same vector-Jacobian products as the Neumann series,
combined optimally.

RBP needs g with g (I - J) = v (see ``rbp.py``). The Neumann series adds the products v J^k
with weight 1 each. After K products, every combination of v, v J, ..., v J^K is available
(the Krylov space of J and v), and the series picks one fixed combination of them. GMRES
(generalised minimal residual, Saad and Schultz 1986) picks, from the same products, the
combination whose residual ||v - g (I - J)|| is smallest. The work per product is the same
vector-Jacobian product; the extra arithmetic is a few inner products per step and a small
least-squares problem, negligible next to a convolution's backward.

Why it matters: the Neumann error shrinks like rho^K, with rho the spectral radius of J. Near
rho = 1, where a trained recurrence sits (the LCP holds it just below tau), K = 15 terms leave
much of the gradient out (55% of a fresh 256-channel hGRU's parameter gradient,
``tools/benchmark.py solvers``), and halving the error costs many more terms. GMRES converges
with the spread of J's spectrum instead. On that fresh cell it reaches the series' K = 15 error
with 4 products; on a trained Pathfinder hGRU, whose spectrum is spread to near 1, it gains
little before K = 30 (docs/BENCHMARKS.md gives both).

The variant here (per group, see ``_batch``: each sample, or the whole batch when the cell
couples samples):

- Arnoldi with modified Gram-Schmidt (two passes) builds an orthonormal basis q_1..q_{m+1} of
  the Krylov space of A = I - J^T from q_1 = v / ||v||, with A Q_m = Q_{m+1} H (H upper
  Hessenberg, (m+1) x m). Each step costs one vector-Jacobian product.
- y minimises ||beta e_1 - H y|| (beta = ||v||), solved in float64 through the normal
  equations with a tiny ridge, so that the zero columns of a stopped sample give zero
  weights; the GMRES solution is u = Q_m y.
- The returned gradient is one further fixed-point step from u, g = v + u J, which the Arnoldi
  relation gives without another product: u J = Q_m y - Q_{m+1} H y. Its residual is r J,
  with r the GMRES residual, so it lies in the same space as the Neumann series of m products
  (v, ..., v J^m), and it is smaller than r wherever ||J|| < 1.

Safeguards, with no host synchronisation: a step whose product is not finite ends that group's
iteration (its column is dropped, the solution from the earlier steps is kept) and counts as a
fallback. A final gradient that is not finite falls back to g = v and is counted. Its norm is
not bounded: near a spectral radius of 1 the true g can be many times ||v|| (about 30x on a
fresh 64-channel hGRU), far beyond what a K-term series can reach.
With ``rtol > 0`` a group stops adding products once its residual (known from the
least-squares problem) is at most ``rtol`` ||v||.
"""

from typing import Tuple

import torch

from ._batch import as_groups as _groups

__all__ = ["gmres_solve"]

_RIDGE = 1e-12  # relative ridge of the small least-squares problem (float64)


def _least_squares(hess: torch.Tensor, beta: torch.Tensor, cols: int):
    """y minimising ||beta e_1 - H[:, :cols+1, :cols] y|| per group, and that residual norm."""
    h = hess[:, : cols + 1, :cols].double()
    rhs = torch.zeros(h.shape[0], cols + 1, dtype=h.dtype, device=h.device)
    rhs[:, 0] = beta.double()
    gram = h.transpose(1, 2) @ h
    scale = torch.diagonal(gram, dim1=1, dim2=2).mean(1).clamp_min(1e-300)
    eye = torch.eye(cols, dtype=h.dtype, device=h.device)
    gram = gram + (_RIDGE * scale)[:, None, None] * eye
    y, _ = torch.linalg.solve_ex(gram, (h.transpose(1, 2) @ rhs[..., None]), check_errors=False)
    residual = torch.linalg.vector_norm(rhs - (h @ y)[..., 0], dim=1)
    return y[..., 0], residual


def gmres_solve(
    h_next: torch.Tensor,
    h: torch.Tensor,
    v: torch.Tensor,
    steps: int,
    rtol: float = 0.0,
    coupled: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g ~ v (I - J)^-1, J = d h_next / d h, from ``steps`` vector-Jacobian products by GMRES.

    Same arguments and returns as :func:`~.rbp.neumann_series` (g, diverged per group, products
    used per group); ``steps = 0`` gives g = v.
    """
    first = _groups(v, coupled)
    beta = torch.linalg.vector_norm(first, dim=1)
    diverged = torch.zeros_like(beta, dtype=torch.bool)
    terms = torch.zeros_like(beta, dtype=torch.long)
    if steps == 0:
        return v.clone(), diverged, terms
    active = beta > 0
    basis = [torch.where(active[:, None], first / beta.clamp_min(1e-300)[:, None], 0.0)]
    hess = first.new_zeros(first.shape[0], steps + 1, steps)
    for j in range(steps):
        (product,) = torch.autograd.grad(h_next, h, basis[j].reshape_as(v), retain_graph=True)
        w = basis[j] - _groups(product, coupled)  # A q_j = q_j - q_j J
        size = torch.linalg.vector_norm(w, dim=1)
        column = torch.zeros_like(hess[:, :, 0])
        for _ in range(2):  # modified Gram-Schmidt, twice: orthogonal to rounding in float32
            for i, q in enumerate(basis):
                c = (w * q).sum(1)
                column[:, i] += c
                w = w - c[:, None] * q
        norm = torch.linalg.vector_norm(w, dim=1)
        column[:, j + 1] = norm
        column = column[:, : j + 2]
        ok = torch.isfinite(column).all(1)
        diverged |= active & ~ok
        active &= ok
        # A stopped group's column is zero from here on; its ridge weight is then zero too.
        hess[:, : j + 2, j] = torch.where(active[:, None], column, 0.0)
        terms += active
        # Breakdown: A q_j (nearly) lies in the basis already, so the solution does too; what is
        # left of w is rounding, and a basis vector made of it would only add noise.
        alive = active & (norm > 100 * torch.finfo(w.dtype).eps * size)
        basis.append(torch.where(alive[:, None], w / norm.clamp_min(1e-300)[:, None], 0.0))
        if rtol > 0 and j + 1 < steps:
            _, residual = _least_squares(hess, beta, j + 1)
            active &= residual.to(beta.dtype) > rtol * beta
    y, _ = _least_squares(hess, beta, steps)
    y = y.to(first.dtype)
    q = torch.stack(basis, 1)  # (G, m + 1, n)
    u = torch.einsum("gm,gmn->gn", y, q[:, :steps])
    g = first + u - torch.einsum("gk,gkn->gn", torch.einsum("gkm,gm->gk", hess, y), q)
    size = torch.linalg.vector_norm(g, dim=1)
    ok = torch.isfinite(size)
    diverged |= ~ok & (beta > 0)
    g = torch.where(ok[:, None], g, first)
    return g.reshape_as(v), diverged, terms
