"""Graph construction shared by all models. Graphs stay sparse (torch sparse CSR, float32).

The user-item graph of LightGCN and its descendants is the bipartite adjacency
A = [[0, R], [R^T, 0]] of the training matrix R [n_users, n_items], symmetrically normalised
as A_hat = D^{-1/2} A D^{-1/2}; a node without edges keeps a zero row.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def scipy_to_torch(matrix: sp.spmatrix, layout: torch.layout = torch.sparse_csr) -> torch.Tensor:
    """A scipy sparse matrix as a float32 torch sparse tensor: CSR with int32 indices (the fastest CPU
    sparse-dense product) by default, or coalesced COO."""
    if layout == torch.sparse_csr:
        csr = matrix.tocsr()
        csr.sum_duplicates()
        csr.sort_indices()
        index_dtype = np.int32 if csr.nnz < np.iinfo(np.int32).max else np.int64
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(index_dtype)),
            torch.from_numpy(csr.indices.astype(index_dtype)),
            torch.from_numpy(csr.data.astype(np.float32)),
            size=csr.shape,
        )
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        indices, torch.from_numpy(coo.data.astype(np.float32)), coo.shape
    ).coalesce()


def bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """A = [[0, R], [R^T, 0]] with binary entries, shape [(n_users + n_items)]^2."""
    binary = train.copy()
    binary.data = np.ones_like(binary.data, dtype=np.float32)
    return sp.bmat([[None, binary], [binary.T, None]], format="csr", dtype=np.float32)


def symmetric_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2} with D the row degrees; zero-degree rows stay zero."""
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree, dtype=np.float64)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    scale = sp.diags(inv_sqrt.astype(np.float32))
    return (scale @ adjacency @ scale).tocsr().astype(np.float32)


def row_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1} A: every non-empty row sums to one."""
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv = np.zeros_like(degree, dtype=np.float64)
    inv[degree > 0] = 1.0 / degree[degree > 0]
    return (sp.diags(inv.astype(np.float32)) @ adjacency).tocsr().astype(np.float32)


def normalized_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    """The symmetric-normalised user-item adjacency as a torch sparse CSR tensor."""
    return scipy_to_torch(symmetric_normalize(bipartite_adjacency(train)))


class _SymmetricSparseMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A: the backward pass A^T g equals A g, which reuses A's CSR layout
    instead of transposing it (3x faster than autograd through torch.sparse.mm on CPU)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, adjacency: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        ctx.adjacency = adjacency
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, torch.sparse.mm(ctx.adjacency, grad)


def symmetric_spmm(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A x with gradient with respect to x only; `adjacency` must be symmetric (as the user-item graph is)."""
    return _SymmetricSparseMM.apply(adjacency, x)


def normalized_bipartite(train: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """The two non-zero blocks of `normalized_adjacency`: R~ = D_u^{-1/2} R D_i^{-1/2} [n_users, n_items]
    and its transpose [n_items, n_users], each as torch sparse CSR (same values as the full matrix)."""
    normalised = symmetric_normalize(bipartite_adjacency(train))
    n_users = train.shape[0]
    return scipy_to_torch(normalised[:n_users, n_users:]), scipy_to_torch(normalised[n_users:, :n_users])


def _spmm_into(out: torch.Tensor, matrix: torch.Tensor, x: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """out = matrix @ x (or out += matrix @ x) in place: `torch.sparse.mm` would allocate a zero-filled
    `self` and copy it into a fresh result on every call, two wasted passes over a [n, d] tensor."""
    return torch.addmm(out, matrix, x, beta=1.0 if accumulate else 0.0, out=out)


class _BipartiteMeanPropagation(torch.autograd.Function):
    """LightGCN's propagation on the bipartite graph, as one autograd node.

    Forward: u_{l+1} = R~ i_l, i_{l+1} = R~^T u_l, outputs the layer means (sum_l u_l) / (L+1) and
    (sum_l i_l) / (L+1), accumulated in place into two buffers, layer buffers recycled.
    Backward (Horner): h^u_L = g^u, h^u_l = g^u + R~ h^i_{l+1} (and the mirror for items), gradient
    h_0 / (L+1), so each layer is one in-place sparse addmm; nothing of size [n_users + n_items, d] is
    concatenated, sliced or zero-filled.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        norm_r: torch.Tensor,
        norm_rt: torch.Tensor,
        users: torch.Tensor,
        items: torch.Tensor,
        n_layers: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.graphs, ctx.n_layers = (norm_r, norm_rt), n_layers
        total_u, total_i = (
            users.clone(memory_format=torch.contiguous_format),
            items.clone(memory_format=torch.contiguous_format),
        )
        layer_u, layer_i = users, items
        spare: tuple[torch.Tensor, torch.Tensor] | None = None
        for _ in range(n_layers):
            # zero-initialised (never NaN garbage) so any backend may read `out` even with beta = 0
            next_u, next_i = spare or (torch.zeros_like(total_u), torch.zeros_like(total_i))
            _spmm_into(next_u, norm_r, layer_i, accumulate=False)
            _spmm_into(next_i, norm_rt, layer_u, accumulate=False)
            total_u.add_(next_u)
            total_i.add_(next_i)
            spare = None if layer_u is users else (layer_u, layer_i)
            layer_u, layer_i = next_u, next_i
        return total_u.div_(n_layers + 1), total_i.div_(n_layers + 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_u: torch.Tensor, grad_i: torch.Tensor
    ) -> tuple[None, None, torch.Tensor, torch.Tensor, None]:
        # h_L = g, h_l = g + A_hat h_{l+1}; the gradient is h_0 / (L+1) (dividing once at the end is exact
        # for L+1 a power of two, and saves two full-size temporaries)
        norm_r, norm_rt = ctx.graphs
        layer_u, layer_i = grad_u, grad_i
        spare: tuple[torch.Tensor, torch.Tensor] | None = None
        for _ in range(ctx.n_layers):
            next_u, next_i = spare or (
                torch.empty_like(grad_u, memory_format=torch.contiguous_format),
                torch.empty_like(grad_i, memory_format=torch.contiguous_format),
            )
            _spmm_into(next_u.copy_(grad_u), norm_r, layer_i, accumulate=True)
            _spmm_into(next_i.copy_(grad_i), norm_rt, layer_u, accumulate=True)
            spare = None if layer_u is grad_u else (layer_u, layer_i)
            layer_u, layer_i = next_u, next_i
        if layer_u is grad_u:  # no layers: do not scale autograd's own buffers in place
            return None, None, grad_u / (ctx.n_layers + 1), grad_i / (ctx.n_layers + 1), None
        return None, None, layer_u.div_(ctx.n_layers + 1), layer_i.div_(ctx.n_layers + 1), None


def bipartite_mean_propagation(
    norm_r: torch.Tensor, norm_rt: torch.Tensor, users: torch.Tensor, items: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN's final embeddings: the mean over layers 0..n_layers of A_hat^l [users; items], computed with
    the blocks from `normalized_bipartite` (A_hat = [[0, R~], [R~^T, 0]]), split back into users and items.
    Differentiable with respect to `users` and `items`."""
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    return _BipartiteMeanPropagation.apply(norm_r, norm_rt, users, items, n_layers)
