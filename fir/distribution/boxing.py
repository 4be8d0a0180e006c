"""Boxing: the cheapest sequence of collectives that takes a tensor from one nd-SBP to another.

A step changes the SBP of exactly one mesh axis `a` and runs within every group: the p = mesh_shape[a]
devices that differ only in coordinate a. The steps, one per 1-D transition (P(max) acts like P with max):

| kind           | transition   | bytes sent per device      |
| -------------- | ------------ | -------------------------- |
| all_reduce     | P -> B       | ceil(2 (p-1)/p T)  (ring)  |
| reduce_scatter | P -> S(i)    | ceil((p-1)/p T)            |
| all_gather     | S(i) -> B    | ceil((p-1)/p T)            |
| all_to_all     | S(i) -> S(j) | ceil((p-1)/p T/p)          |
| slice          | B -> S(i)    | 0                          |

T is the bytes of the tensor one group holds before the step: the local tensor of a device whose SBP on
axis a is replaced by B. The bytes are the largest over devices, so T is taken at coordinate 0 of every axis
(numpy.array_split is front-heavy). Nothing else moves: no step creates a P, and P never becomes P(max).

Splits nest in mesh-axis order (fir.distribution.layout), so a step that splits or joins tensor axis d on mesh axis a is
only correct when no inner mesh axis b > a splits d too: the group's pieces would otherwise not be contiguous.
Both ends of every step must be valid layouts (fir.distribution.layout.check_nd).

`boxing_path` runs Dijkstra over the nd-SBPs reachable this way, minimising (total bytes, number of steps).
`transfer_path` plans a move between two meshes: steps on the source mesh, one send_recv, steps on the target.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fir.dialects.dtypes import numpy_dtype
from fir.distribution.layout import check_nd, max_local_elements
from fir.distribution.sbp import B, Broadcast, NdSbp, Partial, Sbp, Split

Shape = tuple[int, ...]
# A path's cost: (total bytes, number of steps), compared lexicographically.
Cost = tuple[int, int]

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "slice")

# bytes = ceil(T * num(p) / den(p)), kept in integers so that the rounding is exact.
_RATIO: dict[str, Callable[[int], tuple[int, int]]] = {
    "all_reduce": lambda p: (2 * (p - 1), p),
    "reduce_scatter": lambda p: (p - 1, p),
    "all_gather": lambda p: (p - 1, p),
    "all_to_all": lambda p: (p - 1, p * p),
    "slice": lambda p: (0, 1),
}


@dataclass(frozen=True)
class Step:
    """One collective: mesh axis `axis` goes from src[axis] to dst[axis]; the other axes are unchanged."""

    kind: str
    axis: int
    src: NdSbp
    dst: NdSbp
    bytes_per_device: int


def step_kind(src1: Sbp, dst1: Sbp) -> str | None:
    """The collective that moves one mesh axis from `src1` to `dst1`, or None when no single step does."""
    if isinstance(src1, Partial):
        if isinstance(dst1, Broadcast):
            return "all_reduce"
        return "reduce_scatter" if isinstance(dst1, Split) else None
    if isinstance(src1, Split):
        if isinstance(dst1, Broadcast):
            return "all_gather"
        return "all_to_all" if isinstance(dst1, Split) and dst1.axis != src1.axis else None
    if isinstance(src1, Broadcast) and isinstance(dst1, Split):
        return "slice"
    return None


def _nests(state: NdSbp, axis: int, new: Sbp) -> bool:
    """True when no mesh axis inside `axis` splits a tensor axis that this step splits or joins."""
    dims = {s.axis for s in (state[axis], new) if isinstance(s, Split)}
    return not any(isinstance(s, Split) and s.axis in dims for s in state[axis + 1:])


def _step_bytes(kind: str, axis: int, src: NdSbp, shape: Shape, itemsize: int, mesh_shape: Shape) -> int:
    p = mesh_shape[axis]
    group_nd = src[:axis] + (B,) + src[axis + 1:]
    t = max_local_elements(shape, group_nd, mesh_shape) * itemsize
    num, den = _RATIO[kind](p)
    return -(-t * num // den)


@functools.lru_cache(maxsize=65536)
def _moves(state: NdSbp, shape: Shape, itemsize: int, mesh_shape: Shape) -> tuple[Step, ...]:
    """Every legal single step out of `state`."""
    # No step produces P, so the targets are B and the splits.
    targets = (B, *(Split(i) for i in range(len(shape))))
    out = []
    for axis, cur in enumerate(state):
        for new in targets:
            kind = step_kind(cur, new)
            if kind is None or not _nests(state, axis, new):
                continue
            nxt = state[:axis] + (new,) + state[axis + 1:]
            if check_nd(shape, nxt, mesh_shape) is None:
                out.append(Step(kind, axis, state, nxt, _step_bytes(kind, axis, state, shape, itemsize, mesh_shape)))
    return tuple(out)


def _dijkstra(start: NdSbp, edges: Callable[[NdSbp], Iterable[tuple[Step, NdSbp]]]
              ) -> tuple[dict[NdSbp, Cost], dict[NdSbp, Step]]:
    """Cheapest cost from `start` to every state it reaches, and the last step taken to each."""
    dist: dict[NdSbp, Cost] = {start: (0, 0)}
    via: dict[NdSbp, Step] = {}
    # The counter breaks ties in insertion order: states are not orderable, and plans must be deterministic.
    heap = [(0, 0, 0, start)]
    count = 1
    done = set()
    while heap:
        nbytes, nsteps, _, state = heapq.heappop(heap)
        if state in done:
            continue
        done.add(state)
        for step, nxt in edges(state):
            cost = (nbytes + step.bytes_per_device, nsteps + 1)
            if nxt not in dist or cost < dist[nxt]:
                dist[nxt], via[nxt] = cost, step
                heapq.heappush(heap, (*cost, count, nxt))
                count += 1
    return dist, via


@functools.lru_cache(maxsize=4096)
def _search(src: NdSbp, shape: Shape, dtype: str, mesh_shape: Shape) -> tuple[dict[NdSbp, Cost], dict[NdSbp, Step]]:
    itemsize = numpy_dtype(dtype).itemsize
    return _dijkstra(src, lambda s: ((st, st.dst) for st in _moves(s, shape, itemsize, mesh_shape)))


def _valid(nd: NdSbp, shape: Shape, mesh_shape: Shape) -> bool:
    return check_nd(shape, nd, mesh_shape) is None


@functools.lru_cache(maxsize=4096)
def _path(src: NdSbp, dst: NdSbp, shape: Shape, dtype: str, mesh_shape: Shape) -> tuple[Step, ...] | None:
    if not (_valid(src, shape, mesh_shape) and _valid(dst, shape, mesh_shape)):
        return None
    _, via = _search(src, shape, dtype, mesh_shape)
    if dst != src and dst not in via:
        return None
    steps = []
    state = dst
    while state != src:
        steps.append(via[state])
        state = via[state].src
    return tuple(reversed(steps))


def boxing_path(src: NdSbp, dst: NdSbp, shape: Sequence[int], dtype: str,
                mesh_shape: Sequence[int]) -> list[Step] | None:
    """The cheapest steps from `src` to `dst` (by bytes, then steps); [] when equal, None when impossible."""
    path = _path(tuple(src), tuple(dst), tuple(shape), dtype, tuple(mesh_shape))
    return None if path is None else list(path)


def boxing_cost(src: NdSbp, dst: NdSbp, shape: Sequence[int], dtype: str, mesh_shape: Sequence[int]) -> float:
    """Total bytes per device of `boxing_path`, math.inf when impossible."""
    path = boxing_path(src, dst, shape, dtype, mesh_shape)
    return math.inf if path is None else sum(s.bytes_per_device for s in path)


def _local_bytes(nd: NdSbp, shape: Shape, dtype: str, mesh_shape: Shape) -> int:
    return max_local_elements(shape, nd, mesh_shape) * numpy_dtype(dtype).itemsize


Transfer = tuple[list[Step], NdSbp, NdSbp, int, list[Step]]


@functools.lru_cache(maxsize=4096)
def _transfer_same_shape(src: NdSbp, dst: NdSbp, shape: Shape, dtype: str, mesh_shape: Shape
                         ) -> tuple[tuple[Step, ...], NdSbp, int, tuple[Step, ...]] | None:
    """Both meshes have `mesh_shape`: send_recv any middle layout X, chosen to minimise the total."""
    if not (_valid(src, shape, mesh_shape) and _valid(dst, shape, mesh_shape)):
        return None
    to_x, via_src = _search(src, shape, dtype, mesh_shape)
    if dst not in to_x:
        return None
    # Every state on a path X -> dst is reachable from src, so the reverse graph over to_x's states is complete.
    into: dict[NdSbp, list[Step]] = {}
    itemsize = numpy_dtype(dtype).itemsize
    for state in to_x:
        for st in _moves(state, shape, itemsize, mesh_shape):
            into.setdefault(st.dst, []).append(st)
    from_x, via_dst = _dijkstra(dst, lambda s: ((st, st.src) for st in into.get(s, ())))
    best: tuple[tuple[int, int], NdSbp] | None = None
    for x, (b1, n1) in to_x.items():
        if x not in from_x:
            continue
        b2, n2 = from_x[x]
        cost = (b1 + _local_bytes(x, shape, dtype, mesh_shape) + b2, n1 + n2)
        if best is None or cost < best[0]:
            best = (cost, x)
    assert best is not None  # dst itself is reachable from src and reaches dst
    x = best[1]
    before, state = [], x
    while state != src:
        before.append(via_src[state])
        state = via_src[state].src
    after, state = [], x
    while state != dst:
        after.append(via_dst[state])
        state = via_dst[state].dst
    return tuple(reversed(before)), x, _local_bytes(x, shape, dtype, mesh_shape), tuple(after)


def transfer_path(src_mesh_shape: Sequence[int], src_nd: NdSbp, dst_mesh_shape: Sequence[int], dst_nd: NdSbp,
                  shape: Sequence[int], dtype: str, n_src_devices: int) -> Transfer | None:
    """The cheapest move between meshes: (steps on the source mesh to X, X there, X on the target,
    send_recv bytes per device, steps on the target mesh from X); None when impossible.

    Between meshes of one shape X is any layout, kept by the send_recv (device k to device k); otherwise X is
    all B on both sides and target device j reads the whole tensor from source device j mod n_src_devices."""
    src_ms, dst_ms, shape_t = tuple(src_mesh_shape), tuple(dst_mesh_shape), tuple(shape)
    if n_src_devices < 1:
        raise ValueError(f"n_src_devices must be positive, got {n_src_devices}")
    if src_ms == dst_ms:
        plan = _transfer_same_shape(tuple(src_nd), tuple(dst_nd), shape_t, dtype, src_ms)
        if plan is None:
            return None
        before, x, nbytes, after = plan
        return list(before), x, x, nbytes, list(after)
    x_src, x_dst = (B,) * len(src_ms), (B,) * len(dst_ms)
    before = boxing_path(src_nd, x_src, shape_t, dtype, src_ms)
    after = boxing_path(x_dst, dst_nd, shape_t, dtype, dst_ms)
    if before is None or after is None:
        return None
    return before, x_src, x_dst, _local_bytes(x_src, shape_t, dtype, src_ms), after


def transfer_cost(src_mesh_shape: Sequence[int], src_nd: NdSbp, dst_mesh_shape: Sequence[int], dst_nd: NdSbp,
                  shape: Sequence[int], dtype: str, n_src_devices: int) -> float:
    """Total bytes per device of `transfer_path` (both meshes' steps and the send_recv), math.inf when impossible."""
    plan = transfer_path(src_mesh_shape, src_nd, dst_mesh_shape, dst_nd, shape, dtype, n_src_devices)
    if plan is None:
        return math.inf
    before, _, _, nbytes, after = plan
    return sum(s.bytes_per_device for s in before) + nbytes + sum(s.bytes_per_device for s in after)


__all__ = ["Step", "KINDS", "step_kind", "boxing_path", "boxing_cost", "transfer_path", "transfer_cost"]
