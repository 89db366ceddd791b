"""Nearest neighbours in chunks: k-th neighbour distances within a set, nearest distances across
sets. Squared distances come from ‖a‖² + ‖b‖² − 2a·b (one matrix product per chunk), in float64
for the norms and float32 for the product, on the GPU when there is one."""

from __future__ import annotations

import torch

#: Rows of the query set per chunk: a chunk's distance matrix is CHUNK × (reference rows) floats.
CHUNK = 1024


def _pairwise_sq(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    a_sq = a.double().square().sum(1, keepdim=True).float()
    return (a_sq + b_sq[None, :] - 2 * a @ b.T).clamp_(min=0)


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor, k: int = 1, exclude_self: bool = False,
                      device: torch.device | str | None = None, squared: bool = False) -> torch.Tensor:
    """For each query row, the Euclidean distance to its k-th nearest reference row (k = 1: the
    nearest; ``squared``: its square). With ``exclude_self`` (queries are the reference), a row is
    not its own neighbour."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    queries = queries.reshape(len(queries), -1).float()
    reference = reference.reshape(len(reference), -1).float().to(device)
    reference_sq = reference.double().square().sum(1).float()
    out = []
    for start in range(0, len(queries), CHUNK):
        chunk = queries[start:start + CHUNK].to(device)
        distances = _pairwise_sq(chunk, reference, reference_sq)
        if exclude_self:
            rows = torch.arange(len(chunk), device=device)
            distances[rows, rows + start] = float("inf")
        nearest = distances.kthvalue(k, dim=1).values if k > 1 else distances.min(dim=1).values
        out.append(nearest.cpu() if squared else nearest.sqrt().cpu())
    return torch.cat(out)


def within_radius_counts(queries: torch.Tensor, reference: torch.Tensor, squared_radii: torch.Tensor,
                         device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, how many open reference balls B(reference_i, radius_i) contain it (a query at
    exactly the radius does not, as in the authors' ``prdc`` code); and for each reference ball,
    whether any query falls in it. Radii are given squared, as ``nearest_distances(squared=True)``
    returns them, so that a point and its own k-th neighbour compare on identical numbers."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    queries = queries.reshape(len(queries), -1).float()
    reference = reference.reshape(len(reference), -1).float().to(device)
    reference_sq = reference.double().square().sum(1).float()
    radii_sq = squared_radii.to(device).float()
    counts, hit = [], torch.zeros(len(reference), dtype=torch.bool, device=device)
    for start in range(0, len(queries), CHUNK):
        inside = _pairwise_sq(queries[start:start + CHUNK].to(device), reference, reference_sq) < radii_sq[None, :]
        counts.append(inside.sum(1).cpu())
        hit |= inside.any(0)
    return torch.cat(counts), hit.cpu()
