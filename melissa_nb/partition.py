"""How the cells of a field are split over server ranks (Melissa 0.6's partition).

Server rank i owns a contiguous block of G // M cells, plus one if i < G % M. Client and server
both compute it, so it lives here, once.
"""

from __future__ import annotations


def rank_cells(total_cells: int, ranks: int, rank: int) -> tuple[int, int]:
    """First and one-past-last global cell owned by server `rank` of `ranks`."""
    if ranks < 1:
        raise ValueError(f"number of server ranks must be >= 1, got {ranks}")
    if not 0 <= rank < ranks:
        raise ValueError(f"server rank {rank} not in [0, {ranks})")
    if total_cells < 0:
        raise ValueError(f"total cell count must be >= 0, got {total_cells}")
    base, extra = divmod(total_cells, ranks)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def overlaps(
    local_start: int, local_size: int, total_cells: int, ranks: int
) -> list[tuple[int, int, int]]:
    """(server_rank, offset_in_local_vector, size) for every server block a local slice overlaps.

    A client rank owning global cells [local_start, local_start + local_size) sends exactly these
    pieces; pieces of size 0 are not listed (nothing is sent to ranks it does not overlap).
    """
    local_end = local_start + local_size
    pieces = []
    for rank in range(ranks):
        start, end = rank_cells(total_cells, ranks, rank)
        lo, hi = max(start, local_start), min(end, local_end)
        if hi > lo:
            pieces.append((rank, lo - local_start, hi - lo))
    return pieces
