"""The `comm` dialect: the data movement that boxing inserts between a producer's and a consumer's layout.

Each collective changes the SBP of exactly one mesh axis and runs among the devices that differ only along that
axis. In the logical program (after `insert-boxing`) a collective names its mesh and has the logical type. In an
SPMD program (after `spmd-partition`) it also has an `id` that the members of one collective share, and its types
are local; its group is implied: the devices of its mesh that differ from the running one only along the axis
the collective changes. In a per-device program (after `partition`) it names that `group` too (device ids in
mesh-axis order).

| op                  | transition on one mesh axis | bytes sent per device (T: the tensor on one group) |
| ------------------- | --------------------------- | ------------------------------------------------- |
| comm.all_reduce     | P -> B                      | 2 (p-1)/p T (ring)                                |
| comm.reduce_scatter | P -> S(i)                   | (p-1)/p T                                         |
| comm.all_gather     | S(i) -> B                   | (p-1)/p T                                         |
| comm.all_to_all     | S(i) -> S(j)                | (p-1)/p T/p                                       |
| comm.slice          | B -> S(i)                   | 0 (each device keeps its piece)                   |
| comm.send_recv      | one mesh to another         | the local piece                                   |

`comm.send_recv` moves a tensor between two meshes of the same shape keeping its SBP (device k of one mesh to
device k of the other), or, between meshes of different shapes, a broadcast tensor (device j of the target
reads from device j mod n of the source). `spmd-partition` lowers it to a `comm.send` in the source's program
and a `comm.recv` in the target's, which name both meshes (`mesh`, `to_mesh`): the peers follow from them.
`partition` names the peer device (`to_device`, `from_device`) and lowers `comm.slice` to `flow.slice` with the
device's own offsets.
"""

from __future__ import annotations

from typing import Any, ClassVar

from xdsl.dialects.builtin import ArrayAttr, SymbolRefAttr, TensorType
from xdsl.ir import Dialect
from xdsl.irdl import irdl_op_definition, operand_def, opt_prop_def, prop_def, result_def

from fir.dialects.attr_schema import OPTIONAL, AttrSpec, IntListSpec, IntSpec
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import TT, FirOp, fmt_tt
from fir.dialects.flow import INT_LIST_PROP, INT_PROP
from fir.dialects.plan import INSTR_ATTRS
from fir.dialects.sbp import NdSbpSpec, SymbolSpec
from fir.distribution.sbp import Broadcast, Partial, Sbp, Split, changed_axis, format_nd
from fir.dialects.shape_inference import ShapeError


class CommOp(FirOp):
    """Base of the comm ops."""

    DISCARDABLE: ClassVar[frozenset[str]] = frozenset(INSTR_ATTRS)

    @property
    def is_local(self) -> bool:
        """True after partition: the op runs on one device with local types."""
        return "id" in self.properties


_COLLECTIVE_ATTRS: dict[str, AttrSpec] = {
    "mesh": SymbolSpec(doc="the mesh the collective runs on"),
    "from": NdSbpSpec(doc="the operand's nd-SBP"),
    "to": NdSbpSpec(doc="the result's nd-SBP"),
    "bytes_per_device": IntSpec(doc="bytes each device sends (the largest over devices)"),
    "group": IntListSpec(default=OPTIONAL, doc="after partition: the devices of this device's group, in order"),
    "id": IntSpec(default=OPTIONAL, doc="after (spmd-)partition: shared by the members of one collective"),
}


def _ok(kind: str, src: Sbp, dst: Sbp) -> bool:
    if kind == "all_reduce":
        return isinstance(src, Partial) and isinstance(dst, Broadcast)
    if kind == "reduce_scatter":
        return isinstance(src, Partial) and isinstance(dst, Split)
    if kind == "all_gather":
        return isinstance(src, Split) and isinstance(dst, Broadcast)
    if kind == "all_to_all":
        return isinstance(src, Split) and isinstance(dst, Split) and src.axis != dst.axis
    if kind == "slice":
        return isinstance(src, Broadcast) and isinstance(dst, Split)
    raise AssertionError(kind)


_TRANSITION = {
    "all_reduce": "P -> B",
    "reduce_scatter": "P -> S(i)",
    "all_gather": "S(i) -> B",
    "all_to_all": "S(i) -> S(j) with i != j",
    "slice": "B -> S(i)",
}


class CollectiveOp(CommOp):
    """A boxing step on one mesh axis."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    mesh = prop_def(SymbolRefAttr)
    from_ = prop_def(ArrayAttr, prop_name="from")
    to = prop_def(ArrayAttr)
    bytes_per_device = prop_def(INT_PROP)
    group = opt_prop_def(INT_LIST_PROP)
    id = opt_prop_def(INT_PROP)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = _COLLECTIVE_ATTRS
    NEEDS_RESULT_TYPE: ClassVar[bool] = True
    KIND: ClassVar[str] = ""

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        src, dst = attrs["from"], attrs["to"]
        axis = changed_axis(src, dst)
        if axis is None:
            raise ShapeError(f"from {format_nd(src)} and to {format_nd(dst)} must differ on exactly one mesh axis")
        if not _ok(cls.KIND, src[axis], dst[axis]):
            raise ShapeError(f"{cls.name} moves {_TRANSITION[cls.KIND]} on one mesh axis, not "
                             f"{src[axis]} -> {dst[axis]} (mesh axis {axis})")
        rank = len(ins[0][0])
        for s in (*src, *dst):
            if isinstance(s, Split) and s.axis >= rank:
                raise ShapeError(f"{s} names axis {s.axis} of a rank-{rank} tensor")
        if "group" in attrs and "id" not in attrs:
            raise ShapeError("a collective with a group needs an id (a partitioned collective has both)")
        if declared is None:
            return ins[0]
        if "id" in attrs:  # local types: the shape changes with the device's piece
            if declared[1] != ins[0][1] or len(declared[0]) != rank:
                raise ShapeError(f"result {fmt_tt(declared)} must have the operand's rank and dtype ({fmt_tt(ins[0])})")
            if cls.KIND == "all_reduce" and declared != ins[0]:
                raise ShapeError(f"all_reduce keeps the shape: operand {fmt_tt(ins[0])}, result {fmt_tt(declared)}")
            return declared
        return ins[0]

    def transition(self) -> tuple[int, Sbp, Sbp]:
        """(mesh axis, its SBP before, its SBP after)."""
        src, dst = self.attr_values()["from"], self.attr_values()["to"]
        axis = changed_axis(src, dst)
        assert axis is not None
        return axis, src[axis], dst[axis]

    def group_for(self, device: int) -> tuple[int, ...]:
        """The devices this collective runs with, checked to list `device` once (FirError otherwise)."""
        vals = self.attr_values()
        if "group" not in vals:
            raise FirError(f"device {device}: '{self.name}' has no group (a per-device program's collectives come "
                           "from partition or expand-devices)", loc_of(self.location))
        group = tuple(vals["group"])
        if device not in group or len(set(group)) != len(group):
            raise FirError(f"device {device}: the group {list(group)} of '{self.name}' must list this device, and "
                           "each device once", loc_of(self.location))
        return group


def _collective(kind: str, doc: str) -> type[CollectiveOp]:
    cls = type(
        "".join(p.capitalize() for p in kind.split("_")) + "Op",
        (CollectiveOp,),
        {"name": f"comm.{kind}", "KIND": kind, "__doc__": doc, "__module__": __name__,
         "__annotations__": {"KIND": ClassVar[str]}},
    )
    return irdl_op_definition(cls)


AllReduceOp = _collective("all_reduce", "P -> B: every device gets the sum (or max) of the group's tensors.")
ReduceScatterOp = _collective("reduce_scatter", "P -> S(i): every device gets its piece of the reduced tensor.")
AllGatherOp = _collective("all_gather", "S(i) -> B: every device gets the group's pieces joined in order.")
AllToAllOp = _collective("all_to_all", "S(i) -> S(j): pieces along j are exchanged, joined along i.")
SliceOp = _collective("slice", "B -> S(i): every device keeps its own piece; no data moves.")


@irdl_op_definition
class SendRecvOp(CommOp):
    """Move a tensor from one mesh to another (before partition)."""

    name = "comm.send_recv"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    mesh = prop_def(SymbolRefAttr)
    to_mesh = prop_def(SymbolRefAttr)
    from_ = prop_def(ArrayAttr, prop_name="from")
    to = prop_def(ArrayAttr)
    bytes_per_device = prop_def(INT_PROP)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "mesh": SymbolSpec(doc="the source mesh"),
        "to_mesh": SymbolSpec(doc="the target mesh"),
        "from": NdSbpSpec(doc="the nd-SBP on the source mesh"),
        "to": NdSbpSpec(doc="the nd-SBP on the target mesh"),
        "bytes_per_device": IntSpec(doc="bytes each sending device sends (the largest over devices)"),
    }
    NEEDS_RESULT_TYPE: ClassVar[bool] = True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        src, dst = attrs["from"], attrs["to"]
        all_b = all(isinstance(s, Broadcast) for s in (*src, *dst))
        if src != dst and not all_b:
            raise ShapeError(f"send_recv keeps the SBP ({format_nd(src)} -> {format_nd(dst)}); "
                             "between meshes of different shapes both sides are all B")
        return ins[0]


_PEER_ATTRS: dict[str, AttrSpec] = {
    "mesh": SymbolSpec(default=OPTIONAL, doc="in an SPMD program: the sending mesh"),
    "to_mesh": SymbolSpec(default=OPTIONAL, doc="in an SPMD program: the receiving mesh"),
    "id": IntSpec(doc="shared by a comm.send and its comm.recv"),
}


def _check_peer(attrs: dict[str, Any], device_attr: str) -> None:
    """A send or recv names its peer device (per-device program) or both meshes (SPMD program), not both."""
    meshes = ("mesh" in attrs) + ("to_mesh" in attrs)
    if meshes == 1:
        raise ShapeError("mesh and to_mesh come together (an SPMD program's send and recv name both meshes)")
    if (device_attr in attrs) == (meshes == 2):
        raise ShapeError(f"give either {device_attr} (a per-device program) or mesh and to_mesh (an SPMD program)")
    if attrs.get(device_attr, 0) < 0:
        raise ShapeError(f"{device_attr} must be a device id (non-negative)")


@irdl_op_definition
class SendOp(CommOp):
    """Send the local tensor to its peer (after partition); the matching comm.recv has the same id. In an SPMD
    program the peers are the devices of `to_mesh` that receive from the running device of `mesh`."""

    name = "comm.send"
    input = operand_def(TensorType)
    to_device = opt_prop_def(INT_PROP)
    mesh = opt_prop_def(SymbolRefAttr)
    to_mesh = opt_prop_def(SymbolRefAttr)
    id = prop_def(INT_PROP)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "to_device": IntSpec(default=OPTIONAL, doc="in a per-device program: the receiving device"),
        **_PEER_ATTRS,
    }

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> None:
        _check_peer(attrs, "to_device")
        return None

    def verify_(self) -> None:
        self._verify_attrs()
        self.infer(self.operand_tts(), self.attr_values(), None)


@irdl_op_definition
class RecvOp(CommOp):
    """Receive a tensor sent by one device (after partition). In an SPMD program the peer is the device of
    `mesh` that sends to the running device of `to_mesh`."""

    name = "comm.recv"
    result = result_def(TensorType)
    from_device = opt_prop_def(INT_PROP)
    mesh = opt_prop_def(SymbolRefAttr)
    to_mesh = opt_prop_def(SymbolRefAttr)
    id = prop_def(INT_PROP)
    FIR_ATTRS: ClassVar[dict[str, AttrSpec]] = {
        "from_device": IntSpec(default=OPTIONAL, doc="in a per-device program: the sending device"),
        **_PEER_ATTRS,
    }
    NEEDS_RESULT_TYPE: ClassVar[bool] = True

    @classmethod
    def infer(cls, ins: list[TT], attrs: dict[str, Any], declared: TT | None) -> TT:
        if declared is None:
            raise ShapeError("comm.recv needs a result type, e.g. `: tensor<4x8xf32>`")
        _check_peer(attrs, "from_device")
        return declared


COLLECTIVES: tuple[type[CollectiveOp], ...] = (AllReduceOp, ReduceScatterOp, AllGatherOp, AllToAllOp, SliceOp)
COMM_OPS: tuple[type[CommOp], ...] = (*COLLECTIVES, SendRecvOp, SendOp, RecvOp)
COLLECTIVE_BY_KIND = {c.KIND: c for c in COLLECTIVES}

Comm = Dialect("comm", list(COMM_OPS), [])

__all__ = ["CommOp", "CollectiveOp", "AllReduceOp", "ReduceScatterOp", "AllGatherOp", "AllToAllOp", "SliceOp",
           "SendRecvOp", "SendOp", "RecvOp", "COLLECTIVES", "COMM_OPS", "COLLECTIVE_BY_KIND", "Comm",
           "changed_axis"]
