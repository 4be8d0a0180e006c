"""Canonicalization patterns of the flow dialect, run by xDSL's `canonicalize` pass."""

from __future__ import annotations

from xdsl.ir import Operation
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from fir.dialects import flow


class _IdentityToInput(RewritePattern):
    """An op whose result type equals its input type and does nothing (reshape, broadcast_to, cast, full slice,
    identity transpose, single-operand concat) is replaced by its input."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, (flow.ReshapeOp, flow.BroadcastToOp, flow.CastOp, flow.TransposeOp, flow.SliceOp,
                               flow.ConcatOp)):
            return
        if len(op.operands) != 1 or op.operands[0].type != op.results[0].type:
            return
        if isinstance(op, flow.TransposeOp) and op.attr_values()["perm"] != sorted(op.attr_values()["perm"]):
            return
        if isinstance(op, flow.SliceOp):
            a = op.attr_values()
            shape = op.operand_tts()[0][0]
            if any(s != 0 for s in a["start"]) or list(a["limit"]) != list(shape) or any(t != 1 for t in a["stride"]):
                return
        rewriter.replace(op, [], [op.operands[0]])


class _FoldTransposeChain(RewritePattern):
    """transpose(transpose(x, p), q) -> transpose(x, p[q])."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: flow.TransposeOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if not isinstance(inner, flow.TransposeOp):
            return
        p = inner.attr_values()["perm"]
        q = op.attr_values()["perm"]
        new = flow.TransposeOp.make([inner.input], perm=[p[i] for i in q])
        new.location = op.location
        rewriter.replace(op, new)


class _FoldReshapeChain(RewritePattern):
    """reshape(reshape(x)) -> reshape(x): only the final shape matters."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: flow.ReshapeOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if not isinstance(inner, flow.ReshapeOp):
            return
        new = flow.ReshapeOp.make([inner.input], op.result.type)
        new.location = op.location
        rewriter.replace(op, new)


class _FoldDoubleNeg(RewritePattern):
    """neg(neg(x)) -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: flow.NegOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if isinstance(inner, flow.NegOp):
            rewriter.replace(op, [], [inner.input])


_IDENTITY = _IdentityToInput()
_PATTERNS: dict[type[Operation], tuple[RewritePattern, ...]] = {
    flow.TransposeOp: (_IDENTITY, _FoldTransposeChain()),
    flow.ReshapeOp: (_IDENTITY, _FoldReshapeChain()),
    flow.NegOp: (_FoldDoubleNeg(),),
    flow.BroadcastToOp: (_IDENTITY,),
    flow.CastOp: (_IDENTITY,),
    flow.SliceOp: (_IDENTITY,),
    flow.ConcatOp: (_IDENTITY,),
}


def patterns_for(op_cls: type[Operation]) -> tuple[RewritePattern, ...]:
    """The canonicalization patterns rooted at ops of this class."""
    return _PATTERNS.get(op_cls, ())
