"""Why mgrec's message passing is torch sparse, not PyTorch Geometric: MMRec's mean aggregation (PyG
``MessagePassing(aggr="mean")``, message x_j) against the same operator as one CSR product
(`graphs.transposed_spmm` with D^-1 A), forward + backward, over tiktok's user-item graph, one thread.

    pip install torch_geometric   # optional, not a dependency of mgrec
    .venv/bin/python scripts/pyg_vs_sparse.py [--data-dir ../shared/data] [--dims 64,256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mgrec.data import read_mmrec
from mgrec.graphs import bipartite_adjacency, row_normalize, scipy_to_torch, transposed_spmm

ROOT = Path(__file__).resolve().parents[1]


def timed(step: object, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of forward + backward of `step(x).sum()`, after two warm-up calls."""
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        step(x).sum().backward()
        times.append(time.perf_counter() - start)
        x.grad = None
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--dims", default="64,256")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    try:
        from torch_geometric.nn import MessagePassing
    except ImportError:
        sys.exit("torch_geometric is not installed: pip install torch_geometric")

    class MeanAggregation(MessagePassing):
        def __init__(self) -> None:
            super().__init__(aggr="mean")

        def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
            return self.propagate(edge_index, x=x)

    torch.set_num_threads(1)
    data = read_mmrec(args.data_dir / "tiktok", "tiktok", {})
    adjacency = bipartite_adjacency(data.train)
    coo = adjacency.tocoo()
    edge_index = torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))  # source -> target
    mean = row_normalize(adjacency)
    matrix, transpose = scipy_to_torch(mean), scipy_to_torch(mean.T.tocsr())
    pyg = MeanAggregation()
    print(f"tiktok user-item graph: {adjacency.shape[0]:,} nodes, {adjacency.nnz:,} directed edges, 1 thread")
    for dim in (int(d) for d in args.dims.split(",")):
        x = torch.randn(adjacency.shape[0], dim, requires_grad=True)
        torch.testing.assert_close(pyg(x, edge_index), transposed_spmm(matrix, transpose, x))
        slow = timed(lambda x: pyg(x, edge_index), x, args.repeats)
        fast = timed(lambda x: transposed_spmm(matrix, transpose, x), x, args.repeats)
        print(f"d={dim}: PyG {slow * 1e3:.1f} ms, torch CSR {fast * 1e3:.1f} ms, ratio {slow / fast:.1f}")


if __name__ == "__main__":
    main()
