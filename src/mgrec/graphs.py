"""Graph construction shared by all models. Graphs stay sparse (torch sparse CSR, float32).

- The user-item graph of LightGCN and its descendants is the bipartite adjacency
  A = [[0, R], [R^T, 0]] of the training matrix R [n_users, n_items], symmetrically normalised
  as A_hat = D^{-1/2} A D^{-1/2}; a node without edges keeps a zero row.
- Item-item graphs connect each item to its k most cosine-similar items by content, computed a block of
  rows at a time (memory O(n_items x (k + block)), never a dense n_items x n_items matrix).
- FREEDOM's degree-sensitive pruning samples user-item edges with probability ~ 1 / sqrt(d_u d_i).
- `cached_graph` stores a built graph keyed by the data's content and the graph's parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class _TransposedSpMM(torch.autograd.Function):
    """y = S x with S^T given for the backward pass (autograd through a CSR product would transpose S on
    every call)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        matrix: torch.Tensor,
        transpose: torch.Tensor,
        x: torch.Tensor,
    ) -> torch.Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad.contiguous())


def transposed_spmm(matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S x with gradient S^T g with respect to x only, for a non-symmetric sparse S (a kNN graph, a
    row-normalised adjacency) whose transpose `transpose` = S^T is built once."""
    return _TransposedSpMM.apply(matrix, transpose, x)


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


# --------------------------------------------------------------------------- item-item kNN graphs
@torch.no_grad()
def knn_neighbours(
    features: torch.Tensor, k: int, block_size: int = 1024, shrink: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of every row by cosine similarity, the row itself included (as in MMRec).

    Returns `(indices, similarities)`, both [n, k], best first. Computed `block_size` rows at a time, so
    memory is O(n x (k + block_size)), never the dense n x n similarity matrix. A zero row has similarity
    0 to everything (MMRec's division by the norm would give NaN). With `shrink` > 0 the similarity is
    x_i . x_j / (|x_i| |x_j| + shrink) (ItemKNNCBF's shrunk cosine, which favours long vectors).
    """
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    features = features.detach()
    if features.dtype != torch.float32:
        features = features.float()
    # scale the products by the inverse norms instead of normalising a copy of the features: at Elec's
    # 63,001 x 4,096 that copy alone would be 1 GB
    norm = features.norm(dim=1)
    inverse_norm = norm.clamp_min(1e-12).reciprocal()
    n, k = features.shape[0], min(k, features.shape[0])
    indices = torch.empty(n, k, dtype=torch.long, device=features.device)
    similarities = torch.empty(n, k, dtype=torch.float32, device=features.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = features[start:stop] @ features.T
        if shrink > 0:
            block.div_(torch.outer(norm[start:stop], norm).add_(shrink))
        else:
            block.mul_(inverse_norm[start:stop, None]).mul_(inverse_norm[None, :])
        similarities[start:stop], indices[start:stop] = block.topk(k, dim=1)
    return indices, similarities


def normalize_edges(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_nodes: int, normalization: str = "sym"
) -> torch.Tensor:
    """Edge values of a normalised sparse matrix given as (rows, cols, values); differentiable in `values`.

    `sym`: d_r^{-1/2} w d_c^{-1/2}; `row`: w / d_r; `none`: w; with d the row sums (MMRec's
    `compute_normalized_laplacian`, which uses row sums on both sides also for a non-symmetric kNN graph).
    Rows summing to zero keep zero values.
    """
    if normalization == "none":
        return values
    degree = torch.zeros(n_nodes, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    safe = torch.where(degree > 0, degree, torch.ones_like(degree))
    if normalization == "sym":
        inv_sqrt = torch.where(degree > 0, safe.rsqrt(), torch.zeros_like(degree))
        return inv_sqrt[rows] * values * inv_sqrt[cols]
    if normalization == "row":
        return values * torch.where(degree > 0, safe.reciprocal(), torch.zeros_like(degree))[rows]
    raise ValueError(f"normalization must be 'sym', 'row' or 'none', got {normalization!r}")


def knn_graph(
    features: torch.Tensor,
    k: int,
    weighted: bool = True,
    normalization: str = "sym",
    block_size: int = 1024,
    shrink: float = 0.0,
) -> sp.csr_matrix:
    """The item-item kNN graph of `features` as a float32 scipy CSR matrix [n, n].

    Row i holds the k most cosine-similar items of i (itself included) with weight = the similarity
    (`weighted`, LATTICE / MGCN / ItemKNNCBF) or 1 (FREEDOM), then normalised by `normalize_edges`;
    `shrink` as in `knn_neighbours`.
    """
    indices, similarities = knn_neighbours(features, k, block_size, shrink)
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    values = similarities.reshape(-1) if weighted else torch.ones(n * k, device=indices.device)
    values = normalize_edges(rows, cols, values, n, normalization)
    matrix = sp.csr_matrix(
        (values.cpu().numpy().astype(np.float32), (rows.cpu().numpy(), cols.cpu().numpy())), shape=(n, n)
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def edge_spmm(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, x: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """(S x) for S given by its edges, differentiable in both `values` and `x` (for graphs whose edge
    weights are learned, e.g. LATTICE's): out[r] = sum over edges (r, c, w) of w x[c]."""
    out = x.new_zeros(n_rows, x.shape[1])
    # index_select, not x[cols]: its backward is deterministic on CPU (x[cols]'s index_put is not always)
    return out.index_add(0, rows, values.unsqueeze(1) * x.index_select(0, cols))


def edge_softmax(index: torch.Tensor, scores: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Softmax of edge scores [E] or [E, h] over the edges sharing the same `index` node (attention over
    a node's neighbours), without a Python loop: exp(s - max_group) / sum_group exp(s - max_group)."""
    shape = (n_nodes, *scores.shape[1:])
    expanded = index.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    group_max = scores.new_full(shape, float("-inf")).scatter_reduce(0, expanded, scores.detach(), "amax")
    exp = (scores - group_max.index_select(0, index)).exp()
    total = scores.new_zeros(shape).index_add(0, index, exp)
    return exp / total.index_select(0, index)


# --------------------------------------------------------------------------- user-user graphs
def user_cooccurrence_graph(
    train: sp.csr_matrix, k: int, block_size: int = 4096, max_pairs: int = 1 << 24
) -> sp.csr_matrix:
    """Each user's k strongest co-occurrence neighbours as a float32 scipy CSR [n_users, n_users].

    The weight of (u, v), u != v, is the number of items both interacted with, C = R R^T without its
    diagonal; row u keeps its k largest entries (ties: the smaller user id first; MMRec's DualGNN
    preprocessing keeps up to 200). C is computed a block of users at a time, a block being at most
    `block_size` users and at most `max_pairs` user pairs before merging (sum over the block's items of
    their degrees), so memory stays O(max_pairs + n_users x k) and never n_users^2 (MMRec's script builds
    the dense matrix in a Python double loop). The result does not depend on the block sizes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_size < 1 or max_pairs < 1:
        raise ValueError(f"block_size and max_pairs must be >= 1, got {block_size} and {max_pairs}")
    binary = train.tocsr().astype(bool).astype(np.float32)
    binary.sum_duplicates()
    transpose = binary.T.tocsr()
    n_users = binary.shape[0]
    item_degree = np.diff(transpose.indptr)
    pairs_per_user = binary @ item_degree.astype(np.float64)
    rows, cols, counts = [], [], []
    start = 0
    while start < n_users:
        budget = np.cumsum(pairs_per_user[start : start + block_size])
        stop = start + max(1, int(np.searchsorted(budget, max_pairs, side="right")))
        block = (binary[start:stop] @ transpose).tocoo()
        off_diagonal = block.row + start != block.col
        block_rows, block_cols = block.row[off_diagonal], block.col[off_diagonal]
        block_counts = block.data[off_diagonal]
        order = _row_major_strongest_first(block_rows, block_counts, block_cols, n_users)
        block_rows, block_cols, block_counts = block_rows[order], block_cols[order], block_counts[order]
        keep = _rank_within_row(block_rows, stop - start) < k
        rows.append(block_rows[keep] + start)
        cols.append(block_cols[keep])
        counts.append(block_counts[keep])
        start = stop
    graph = sp.csr_matrix(
        (np.concatenate(counts).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_users, n_users),
    )
    graph.sort_indices()
    return graph


def _row_major_strongest_first(
    rows: np.ndarray, counts: np.ndarray, cols: np.ndarray, n_cols: int
) -> np.ndarray:
    """The order sorting entries by row, then count descending, then column: one argsort of a packed
    int64 key (5x faster than `np.lexsort` of the three keys), or lexsort when the key would not fit."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    counts = counts.astype(np.int64)
    top = int(counts.max())
    row_bits, count_bits, col_bits = (int(x).bit_length() for x in (rows.max(), top, n_cols))
    if row_bits + count_bits + col_bits > 62:
        return np.lexsort((cols, -counts, rows))
    key = (rows.astype(np.int64) << count_bits | (top - counts)) << col_bits | cols
    return np.argsort(key)


def _rank_within_row(sorted_rows: np.ndarray, n_rows: int) -> np.ndarray:
    """For entries sorted by row, each entry's position within its row (0 for the row's first)."""
    per_row = np.bincount(sorted_rows, minlength=n_rows)
    return np.arange(len(sorted_rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)


def neighbour_table(graph: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of a sparse graph with at most k entries per row as padded tables, strongest first.

    Returns `(neighbours, weights, lengths)`: neighbours [n, k] long and weights [n, k] float32 sorted by
    weight (descending, ties by the smaller id), and the number of real entries per row; padding slots
    hold neighbour 0 and weight 0.
    """
    coo = graph.tocoo()
    lengths = np.diff(graph.tocsr().indptr)
    if lengths.max(initial=0) > k:
        raise ValueError(f"the graph has rows with up to {lengths.max()} entries, more than k = {k}")
    order = np.lexsort((coo.col, -coo.data, coo.row))
    rows, cols, values = coo.row[order], coo.col[order], coo.data[order]
    slot = _rank_within_row(rows, graph.shape[0])
    neighbours = np.zeros((graph.shape[0], k), dtype=np.int64)
    weights = np.zeros((graph.shape[0], k), dtype=np.float32)
    neighbours[rows, slot], weights[rows, slot] = cols, values
    return torch.from_numpy(neighbours), torch.from_numpy(weights), torch.from_numpy(lengths.astype(np.int64))


def sample_neighbours(
    neighbours: torch.Tensor,
    weights: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DualGNN's per-epoch user graph sample: every row gets exactly k neighbours, its real ones first,
    the empty slots of a row with fewer than k filled by neighbours drawn uniformly with replacement from
    its real ones; the mixing weights are the softmax of the co-occurrence counts over the k slots. Rows
    without neighbours get weight 0 everywhere (they aggregate nothing)."""
    n, k = neighbours.shape
    slots = torch.arange(k, device=neighbours.device).expand(n, k)
    uniform = torch.rand(n, k, generator=generator, device="cpu").to(neighbours.device)
    drawn = (uniform * lengths.clamp_min(1)[:, None]).long().clamp_max(k - 1)
    real = slots < lengths[:, None]
    index = torch.where(real, slots, drawn)
    sampled = neighbours.gather(1, index)
    mixing = torch.softmax(weights.gather(1, index), dim=1) * (lengths > 0)[:, None]
    return sampled, mixing


# --------------------------------------------------------------------------- user-item edge pruning
def degree_sensitive_prune(
    train: sp.csr_matrix, keep_ratio: float, generator: torch.Generator | None = None
) -> sp.csr_matrix:
    """FREEDOM's degree-sensitive edge pruning: keep int(keep_ratio * nnz) user-item edges drawn without
    replacement with probability proportional to 1 / sqrt(d_u d_i), so edges between popular nodes are
    dropped most. Sampling uses Efraimidis-Spirakis keys log(U) / w (the same distribution as
    `torch.multinomial(w, n, replacement=False)`, but one vectorised top-k)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    coo = train.tocoo()
    n_keep = int(coo.nnz * keep_ratio)
    if n_keep == coo.nnz:
        return train.tocsr()
    user_degree = np.asarray((train != 0).sum(axis=1)).ravel()
    item_degree = np.asarray((train != 0).sum(axis=0)).ravel()
    weights = torch.from_numpy(1.0 / np.sqrt(user_degree[coo.row] * item_degree[coo.col]))
    uniform = torch.rand(coo.nnz, generator=generator, dtype=torch.float64).clamp_min_(1e-300)
    keep = (uniform.log() / weights).topk(n_keep).indices.numpy()
    kept = sp.csr_matrix(
        (np.ones(n_keep, dtype=np.float32), (coo.row[keep], coo.col[keep])), shape=train.shape
    )
    kept.sort_indices()
    return kept


# --------------------------------------------------------------------------- graph cache
def cached_graph(
    cache_dir: str | Path | None,
    name: str,
    key: dict[str, Any] | Callable[[], dict[str, Any]],
    build: Callable[[], sp.csr_matrix],
) -> sp.csr_matrix:
    """`build()`, or its result from `cache_dir/<name>-<hash of key>.npz` when a previous run made it.

    `key` (or a function returning it, called only when caching is on) must hold everything the graph
    depends on: a hash of the feature values it is built from (so a changed feature file never reuses a
    stale graph) and the graph's parameters. Written atomically,
    by rank 0 only; `cache_dir=None` disables caching.
    """
    if cache_dir is None:
        return build()
    key = key() if callable(key) else key
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{name}-{digest}.npz"
    if path.exists():
        return sp.load_npz(path).tocsr()
    graph = build()
    if int(os.environ.get("RANK", "0")) == 0 and _global_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            temporary = Path(handle.name)
        try:
            sp.save_npz(temporary, graph, compressed=False)
            temporary.chmod(0o644)  # NamedTemporaryFile makes 0600; a shared cache must be readable
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return graph


def _global_rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0
