"""microbatch: split a step into m micro-batches, every op once per micro-batch, for pipelining.

An argument marked `microbatch = i` is cut into m pieces along axis i (like numpy.array_split); the other
arguments (weights) are shared by every micro-batch. Each function with such an argument becomes one logical
function computing the same results, in which every op exists m times, copy k tagged `micro = k` and working
on micro-batch k (an op computed from weights alone exists once, in micro-batch 0); the function's signature
is unchanged.

Micro-batching is data parallelism in time, so the pass reuses the distribution passes: a copy of the function,
stripped of its placement, goes on a virtual mesh of m "devices" with the marked arguments S(i) and the others
B; sbp-infer chooses every op's signature, which must need no boxing but B -> S (a local slice); partition
writes the program of each micro-batch; the m programs are stitched back into the function. A result that is
S(i) becomes a concat of the m pieces, P a chain of flow.add (P(max): flow.max), B micro-batch 0's value, and
an argument returned as it is stays itself. An
operand that would need any other boxing means the op mixes micro-batches (e.g. batch-norm statistics): a
located error at that op. Copies keep the original op's `mesh` (and its `sbp`/`sbp_in` hints); the slices and
combining ops go on the mesh of the value they read, so sbp-infer, insert-boxing and partition run on the result
as on any logical program.
"""

from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, SymbolRefAttr
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue

from fir.distribution import layout
from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.base import to_tt
from fir.dialects.comm import CommOp
from fir.dialects.flow import OPS_BY_NAME, FlowOp
from fir.dialects.plan import INSTR_ATTRS, MICRO, MICROBATCH, ARG_ATTRS
from fir.dialects.sbp import MESH, OP_ATTRS, SBP, SBP_COST, SBP_IN, MeshOp
from fir.distribution.box_insertion import box_function
from fir.distribution.expansion import DeviceProgram, device_programs
from fir.distribution.partitioner import result_layout, spmd_partition
from fir.distribution.inference import infer_function
from fir.distribution.placement import placed_functions, arg_attrs, layout_attrs, res_attrs, set_arg_attrs, value_sbp
from fir.distribution.sbp import B, Broadcast, Mesh, NdSbp, Partial, S, Split

# The virtual mesh whose "devices" are the micro-batches (it lives only in a private copy of the function).
_VIRTUAL_MESH = "microbatches"
# Attributes a function's copy on the virtual mesh drops: placement, SBP, and plan annotations.
_PLACEMENT = frozenset({MESH, SBP, SBP_IN, SBP_COST, *INSTR_ATTRS})


def microbatch_axes(func: FuncOp) -> dict[int, int]:
    """Argument index -> the axis it is cut along, for every argument marked `microbatch`."""
    spec = ARG_ATTRS[MICROBATCH]
    return {i: spec.to_python(d[MICROBATCH]) for i, d in enumerate(arg_attrs(func)) if MICROBATCH in d}


def microbatch_function(func: FuncOp, count: int) -> None:
    """Rewrite `func` in place into `count` micro-batches (see the module docstring)."""
    axes = microbatch_axes(func)
    _check_function(func, axes, count)
    virtual, op_of = _virtual_copy(func, axes, count)
    meshes, funcs = placed_functions(virtual)
    (copy,) = funcs
    infer_function(copy, meshes, False)
    _check_no_mixing(copy, op_of)
    box_function(copy, meshes)
    _Stitcher(func, copy, op_of, axes, count).run()
    args = arg_attrs(func)
    for d in args:
        d.pop(MICROBATCH, None)
    set_arg_attrs(func, args)


# ----------------------------------------------------------------------------------------------- checks
def _check_function(func: FuncOp, axes: dict[int, int], count: int) -> None:
    """Arguments that split into `count` non-empty pieces, and a logical program not yet distributed."""
    block = func.body.blocks.first
    assert block is not None
    for i, axis in axes.items():
        arg = block.args[i]
        shape = to_tt(arg.type)[0]
        name = f"argument {i} (%{arg.name_hint})" if arg.name_hint else f"argument {i}"
        if axis >= len(shape):
            raise FirError(f"{name} of @{func.sym_name.data} has rank {len(shape)}: `microbatch = {axis}` names "
                           "no axis of it", loc_of(func.location))
        if shape[axis] < count:
            raise FirError(f"{name} of @{func.sym_name.data} has {shape[axis]} elements along axis {axis}, fewer "
                           f"than the {count} micro-batches: a micro-batch would be empty", loc_of(func.location))
    for op in block.ops:
        if isinstance(op, CommOp):
            raise FirError(f"microbatch works on the logical program; '{op.name}' is already distributed "
                           "(run microbatch before sbp-infer, insert-boxing and partition)", loc_of(op.location))
        if SBP_COST in op.attributes:
            raise FirError(f"'{op.name}' already has an inferred SBP signature: run microbatch before sbp-infer",
                           loc_of(op.location))
        if MICRO in op.attributes:
            raise FirError(f"'{op.name}' already belongs to micro-batch {op.attributes[MICRO].value.data}: "
                           f"@{func.sym_name.data} is micro-batched already", loc_of(op.location))


def _virtual_copy(func: FuncOp, axes: dict[int, int], count: int) -> tuple[ModuleOp, dict[Operation, FlowOp]]:
    """A module holding the virtual mesh and a copy of `func` placed on it, with the marked arguments S(axis)
    and the rest B; and the map from the copy's ops to `func`'s."""
    copy = func.clone()
    op_of = {c: o for c, o in zip(copy.body.ops, func.body.ops) if isinstance(o, FlowOp)}
    for c in op_of:
        for name in _PLACEMENT & set(c.attributes):
            del c.attributes[name]
    for name in list(copy.attributes):
        if name not in ("sym_name", "function_type", "arg_attrs", "res_attrs", "sym_visibility"):
            del copy.attributes[name]
    copy.attributes[MESH] = SymbolRefAttr(_VIRTUAL_MESH)
    n = len(copy.function_type.inputs.data)
    copy.arg_attrs = ArrayAttr([DictionaryAttr(layout_attrs((S(axes[i]),) if i in axes else (B,)))
                                for i in range(n)])
    copy.res_attrs = None
    mesh = MeshOp.make(_VIRTUAL_MESH, (count,), tuple(range(count)))
    return ModuleOp([mesh, copy]), op_of


def _in_words(nd: NdSbp, needed: bool = False) -> str:
    """An SBP on the virtual mesh, said in micro-batches."""
    s = nd[0]
    if isinstance(s, Split):
        return f"split into micro-batches along axis {s.axis} (S({s.axis}))"
    if isinstance(s, Broadcast):
        return "whole in every micro-batch (B)" if needed else "the same in every micro-batch (B)"
    return f"a {'sum' if s.op == 'sum' else 'maximum'} over micro-batches ({s})"


def _check_no_mixing(copy: FuncOp, op_of: dict[Operation, FlowOp]) -> None:
    """Every operand already in the layout its op's chosen signature needs, or B where it needs S (a slice):
    anything else would move data between micro-batches."""
    block = copy.body.blocks.first
    assert block is not None
    layouts: dict[SSAValue, NdSbp] = {a: value_sbp(d) for a, d in zip(block.args, arg_attrs(copy))}
    for op in block.ops:
        if not isinstance(op, FlowOp):
            continue
        needs = OP_ATTRS[SBP_IN].to_python(op.attributes[SBP_IN]) if SBP_IN in op.attributes else []
        for i, (v, need) in enumerate(zip(op.operands, needs)):
            have = layouts[v]
            if have == need or (isinstance(have[0], Broadcast) and isinstance(need[0], Split)):
                continue
            if isinstance(have[0], Partial):
                # Whatever layout sbp-infer settled on, the op needs the total, which no micro-batch has.
                why = "the op needs the total, which exists only once every micro-batch has run"
            else:
                why = f"the op needs it {_in_words(need, needed=True)}"
            raise FirError(f"'{op.name}' mixes micro-batches: its operand {i} is {_in_words(have)}, but {why}; only "
                           "the function's results may combine micro-batches", loc_of(op_of[op].location))
        layouts[op.results[0]] = OP_ATTRS[SBP].to_python(op.attributes[SBP])


# ----------------------------------------------------------------------------------------------- stitching
class _Stitcher:
    """Writes the m micro-batch programs of the virtual copy into the original function, one after another,
    combining the results as their layouts say."""

    def __init__(self, func: FuncOp, copy: FuncOp, op_of: dict[Operation, FlowOp], axes: dict[int, int],
                 count: int):
        self.func = func
        self.copy = copy
        self.op_of = op_of
        self.axes = axes
        self.count = count
        self.meshes = {_VIRTUAL_MESH: Mesh(_VIRTUAL_MESH, (count,), tuple(range(count)))}
        self.ops: list[Operation] = []
        # Micro-batch 0's value of each op that computes the same value in every micro-batch, by logical op.
        self.shared: dict[Operation, SSAValue] = {}
        # The placement each value of the new body has of its own (None: the function's).
        self.mesh: dict[SSAValue, Attribute | None] = {}
        block = func.body.blocks.first
        assert block is not None
        self.block = block
        for a, d in zip(block.args, arg_attrs(func)):
            self.mesh[a] = d.get(MESH)

    def run(self) -> None:
        old_return = self.block.last_op
        assert isinstance(old_return, ReturnOp)
        results: list[SSAValue] = list(old_return.operands)
        layouts: list[NdSbp] = []
        folded: list[SSAValue | list[SSAValue]] = []
        # A value returned twice is combined once; an argument returned as it is stays itself.
        first = {v: results.index(v) for v in results}
        combined = [j for j, v in enumerate(results) if first[v] == j and not isinstance(v, BlockArgument)]
        programs = device_programs(spmd_partition(self.copy, self.meshes), self.meshes)
        for k, program in enumerate(programs):
            outs = self.micro_batch(program, k)
            if k == 0:
                copy_return = self.copy.body.blocks.first.last_op
                layouts = [result_layout(self.copy, v, d)[1]
                           for v, d in zip(copy_return.operands, res_attrs(self.copy))]
                folded = [[o] if isinstance(nd[0], Split) else o for o, nd in zip(outs, layouts)]
                continue
            for j, (out, nd) in enumerate(zip(outs, layouts)):
                if j not in combined:
                    continue
                if isinstance(nd[0], Split):
                    folded[j].append(out)
                elif isinstance(nd[0], Partial):
                    last = k == self.count - 1
                    hint = _hint(results[j], None if last else f"acc{k}")
                    name = "flow.add" if nd[0].op == "sum" else "flow.max"
                    folded[j] = self.combine(name, [folded[j], out], {}, k, results[j], hint)
        finals: list[SSAValue] = []
        for j, (f, nd) in enumerate(zip(folded, layouts)):
            if j not in combined:
                finals.append(results[j] if isinstance(results[j], BlockArgument) else finals[first[results[j]]])
                continue
            if isinstance(nd[0], Split):
                f = self.combine("flow.concat", f, {"axis": nd[0].axis}, self.count - 1, results[j],
                                 _hint(results[j]))
            elif isinstance(nd[0], Broadcast) and not isinstance(f, BlockArgument) and results[j].name_hint:
                f.name_hint = results[j].name_hint  # micro-batch 0's value is the result: keep its name
            finals.append(f)
        for op in reversed(list(self.block.ops)):
            self.block.erase_op(op)
        self.block.add_ops(self.ops)
        new_return = ReturnOp(*finals)
        new_return.location = old_return.location
        self.block.add_op(new_return)

    def micro_batch(self, program: DeviceProgram, k: int) -> list[SSAValue]:
        """Append micro-batch k's ops (its argument slices first); returns its results. An op whose result is
        the same in every micro-batch (B: computed from weights alone) is written once, in micro-batch 0."""
        dev = program.func
        dev_block = dev.body.blocks.first
        assert dev_block is not None
        for i, (local, arg) in enumerate(zip(dev_block.args, self.block.args)):
            local.replace_all_uses_with(self.slice(arg, i, k) if i in self.axes else arg)
        outs: list[SSAValue] = []
        kept: list[tuple[Operation, Operation | None]] = []
        for op in list(dev_block.ops):
            if isinstance(op, ReturnOp):
                outs = list(op.operands)
                dev_block.erase_op(op)
                continue
            origin = program.origin.get(op)
            same = self._same_in_every_micro_batch(op, origin)
            if same and k > 0:
                op.results[0].replace_all_uses_with(self.shared[origin])
                dev_block.erase_op(op)
                continue
            op.detach()
            kept.append((op, origin))
            if same:
                self.shared[origin] = op.results[0]
        targets = _hint_targets(program.values, kept)
        for op, origin in kept:
            self.place(op, origin, k, computes=op in targets)
            self.ops.append(op)
        return outs

    def _same_in_every_micro_batch(self, op: Operation, origin: Operation | None) -> bool:
        """Does `op` compute its logical op's whole B result from values every micro-batch shares?"""
        if origin is None or op.name != origin.name or len(op.results) != 1 or SBP not in origin.attributes:
            return False
        if op.results[0].type != origin.results[0].type:
            return False  # a piece of the value (a split constant's), not the whole
        if not all(isinstance(s, Broadcast) for s in OP_ATTRS[SBP].to_python(origin.attributes[SBP])):
            return False
        shared = set(self.shared.values())
        return all((isinstance(v, BlockArgument) and v.owner is self.block and v.index not in self.axes)
                   or v in shared for v in op.operands)

    def slice(self, arg: BlockArgument, i: int, k: int) -> SSAValue:
        """Micro-batch k's piece of a marked argument."""
        shape = to_tt(arg.type)[0]
        axis = self.axes[i]
        off, n = layout.piece(shape[axis], self.count, k)
        start, limit = [0] * len(shape), list(shape)
        start[axis], limit[axis] = off, off + n
        op = OPS_BY_NAME["flow.slice"].make([arg], start=start, limit=limit)
        op.location = self.func.location
        if arg.name_hint:
            op.results[0].name_hint = f"{arg.name_hint}.mb{k}"
        self.tag(op, k, self.mesh[arg])
        self.ops.append(op)
        return op.results[0]

    def place(self, op: Operation, origin: Operation | None, k: int, computes: bool) -> None:
        """Tag an op of micro-batch k with k and its logical op's placement (a slice made by boxing: that of the
        value it reads), and keep the logical op's SBP hints on the op `_hint_targets` chose (`computes`): its
        `sbp`, and its `sbp_in` when that op is of the logical op's kind."""
        logical = self.op_of.get(origin) if origin is not None else None
        mesh = logical.attributes.get(MESH) if logical is not None else self.mesh[op.operands[0]]
        if logical is not None and computes:
            for name in (SBP, SBP_IN):
                if name in logical.attributes and (name == SBP or op.name == logical.name):
                    op.attributes[name] = logical.attributes[name]
        if op.results and op.results[0].name_hint:
            op.results[0].name_hint = f"{op.results[0].name_hint}.mb{k}"
        self.tag(op, k, mesh)

    def combine(self, name: str, operands: list[SSAValue], attrs: dict, k: int, result: SSAValue,
                hint: str | None) -> SSAValue:
        """A combining op folding in micro-batch k, on the mesh of the values it reads."""
        op = OPS_BY_NAME[name].make(operands, **attrs)
        owner = result.owner
        op.location = owner.location if isinstance(owner, Operation) else self.func.location
        if hint:
            op.results[0].name_hint = hint
        self.tag(op, k, self.mesh[operands[-1]])
        self.ops.append(op)
        return op.results[0]

    def tag(self, op: Operation, k: int, mesh: Attribute | None) -> None:
        op.attributes[MICRO] = INSTR_ATTRS[MICRO].to_attr(k)
        if mesh is not None:
            op.attributes[MESH] = mesh
        if op.results:
            self.mesh[op.results[0]] = mesh


def _hint_targets(values: dict[SSAValue, SSAValue], kept: list[tuple[Operation, Operation | None]]) -> set[Operation]:
    """The op that takes each logical op's SBP hints in a micro-batch: the one computing its value, or, when a
    finishing op computes it (a mean's scaling by its micro-batch's share), the last op of the logical op's own
    kind (the local mean), so that the hint constrains the computation and the scaling follows its layout."""
    by_origin: dict[Operation, list[Operation]] = {}
    for op, origin in kept:
        if origin is not None:
            by_origin.setdefault(origin, []).append(op)
    targets = set()
    for origin, ops in by_origin.items():
        value = values.get(origin.results[0]) if origin.results else None
        computing = next((op for op in ops if value is not None and value in op.results), None)
        if computing is None:
            continue
        same_kind = [op for op in ops if op.name == origin.name]
        targets.add(computing if computing.name == origin.name or not same_kind else same_kind[-1])
    return targets


def _hint(value: SSAValue, suffix: str | None = None) -> str | None:
    if not value.name_hint:
        return None
    return f"{value.name_hint}.{suffix}" if suffix else value.name_hint
