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
