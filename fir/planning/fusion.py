"""fuse: group chains of elementwise and broadcast ops into `flow.fused` ops, one kernel each.

Runs on every function that is not yet a plan (after partition, on the device programs; before schedule).
A group grows from its last op (the root) backwards through operands that are fusible (unary, cast, binary,
broadcast_to, fill) and whose every use is inside the group, so an intermediate is never needed outside and
lives only in a register of the fused kernel: the group reads its inputs once and writes one output. Ops join
a group only when their placement and plan annotations (`micro`, `sbp`, ...) equal the root's, so fusion
never mixes micro-batches or devices. A group of one op stays as it is.

The fused op sits where the root was; its operands are the group's external inputs in order of first use,
and its body is the group's ops, in their order, on block arguments. The body computes what the ops did, each
result rounded to its dtype, so the numpy backend and the CUDA kernel compute the same numbers as before.
"""

from __future__ import annotations

from xdsl.ir import Block, Operation, Region, SSAValue

from fir.dialects.flow import FUSIBLE_OPS, FusedOp, YieldOp


def _fusible(op: Operation | None) -> bool:
    return isinstance(op, FUSIBLE_OPS)


def fusion_groups(block: Block) -> list[list[Operation]]:
    """Groups of two or more ops to fuse, each in block order (its root last)."""
    grouped: set[Operation] = set()
    groups: list[list[Operation]] = []
    ops = list(block.ops)
    position = {op: i for i, op in enumerate(ops)}
    for root in reversed(ops):
        if not _fusible(root) or root in grouped:
            continue
        # An op joins once all its users have (a DAG's shared operand waits for its last user): count, per
        # candidate, the uses of its results still outside the group, so each use is looked at once.
        attrs = dict(root.attributes)
        group, work = {root}, [root]
        outside: dict[Operation, int] = {}
        while work:
            for v in work.pop().operands:
                d = v.owner
                if (not isinstance(d, Operation) or d in group or d in grouped or not _fusible(d)
                        or d.parent_block() is not block):
                    continue
                if d not in outside:
                    outside[d] = sum(1 for r in d.results for _ in r.uses)
                outside[d] -= 1
                if outside[d] == 0 and dict(d.attributes) == attrs:
                    group.add(d)
                    work.append(d)
        if len(group) > 1:
            grouped |= group
            groups.append(sorted(group, key=position.__getitem__))
    return groups[::-1]


def fuse_group(ops: list[Operation]) -> FusedOp:
    """Replace a group (in block order, root last) by one flow.fused op in the root's place."""
    root = ops[-1]
    members = set(ops)
    seen: dict[SSAValue, None] = {}  # insertion-ordered: inputs in order of first use
    for op in ops:
        for v in op.operands:
            if v.owner not in members:
                seen.setdefault(v)
    inputs = list(seen)
    body = Block(arg_types=[v.type for v in inputs])
    mapping: dict[SSAValue, SSAValue] = dict(zip(inputs, body.args))
    for old, arg in zip(inputs, body.args):
        if old.name_hint:
            arg.name_hint = old.name_hint
    for op in ops:
        clone = op.clone(value_mapper=mapping)
        clone.attributes.clear()
        body.add_op(clone)
        for r_old, r_new in zip(op.results, clone.results):
            mapping[r_old] = r_new
    body.add_op(YieldOp.create(operands=[mapping[root.results[0]]]))
    fused = FusedOp.create(operands=inputs, result_types=[root.results[0].type], regions=[Region(body)],
                           attributes=dict(root.attributes))
    fused.location = root.location
    fused.results[0].name_hint = root.results[0].name_hint
    block = root.parent_block()
    assert block is not None
    block.insert_op_before(fused, root)
    root.results[0].replace_all_uses_with(fused.results[0])
    for op in reversed(ops):
        op.detach()
        op.erase()
    return fused


