"""Generator of an N-layer GPT-2-style decoder as a .fir program, pipelined over stages of tensor-parallel meshes.

The model (forward, f32, causal self-attention unless `causal=False`):

    x      = wte[tokens] + wpe                    flow.gather embedding, learned positions
    N x    h = x + attn(layernorm(x));  x = h + mlp(layernorm(h))        pre-LN blocks as examples/gpt_block.fir
    logits = layernorm(x) @ w_head                untied head
    loss   = cross_entropy(logits, labels)        when `loss=True` (else the logits are the result)

Placement: `stages` sub-meshes `@stage<s>` of `tp` devices each (stage s on devices s*tp .. s*tp+tp-1); the
layers are split evenly over the stages (the first stages take one more when they do not divide). Each stage is
Megatron tensor parallel: W_qkv and W_fc column-parallel (S(1), their biases S(0)), W_o and W_proj row-parallel
(S(0)), and a `{sbp = [B]}` hint on the bias add after each row-parallel matmul, so every block has exactly one
all-reduce in its attention and one in its MLP. W_qkv is fused and head-interleaved as in Megatron (its 3D
columns are, per head, that head's q, k and v columns): a column split then gives each device whole heads, and
q, k, v are slices of a per-head axis that stays unsplit, so no communication is needed to separate them. The
activation crosses stages with one send_recv; its two users in a stage's first layer (the layernorm and the
residual add) are hinted `[B]`, so that the stage receives the whole activation rather than a split one. The head
W_head is column-parallel (vocabulary split); the loss then takes the logits split by batch rows, one all_to_all.
"""

from __future__ import annotations

# The parameters of one block, in argument order, with their shapes (D hidden, F = 4D) and Megatron hints.
_BLOCK_PARAMS = (
    ("ln1_g", "D", None), ("ln1_b", "D", None),
    ("w_qkv", "Dx3D", "S(1)"), ("b_qkv", "3D", "S(0)"),
    ("w_o", "DxD", "S(0)"), ("b_o", "D", None),
    ("ln2_g", "D", None), ("ln2_b", "D", None),
    ("w_fc", "DxF", "S(1)"), ("b_fc", "F", "S(0)"),
    ("w_proj", "FxD", "S(0)"), ("b_proj", "D", None),
)  # fmt: skip


_TANH = 'approximate = "tanh"'


def stage_of_layers(layers: int, stages: int) -> list[int]:
    """The stage of each layer: contiguous runs, as even as possible, the first stages one longer."""
    base, extra = divmod(layers, stages)
    out: list[int] = []
    for s in range(stages):
        out += [s] * (base + (1 if s < extra else 0))
    return out


def _tt(dims: tuple[int, ...], dtype: str = "f32") -> str:
    return "tensor<" + "".join(f"{d}x" for d in dims) + dtype + ">"


def gpt_program(layers: int, hidden: int = 768, heads: int = 12, seq: int = 1024, batch: int = 8,
                stages: int = 2, tp: int = 4, microbatch: bool = False, vocab: int = 50304, causal: bool = True,
                loss: bool = True, dp: int = 1, trainable: bool = False) -> str:
    """The .fir text of an N-layer GPT-2-style decoder on `stages` pipeline stages of `dp` x `tp` devices each
    (a 2-D mesh [dp, tp] when both exceed 1: the batch split over dp, Megatron over tp); `microbatch` marks the
    tokens (and labels) `microbatch = 0` for the microbatch pass; `trainable` marks every weight `trainable = true`
    (the autodiff pass then appends their gradients)."""
    if layers < stages or stages < 1 or tp < 1 or dp < 1:
        raise ValueError(f"need 1 <= stages <= layers and tp, dp >= 1, got layers={layers} stages={stages} "
                         f"tp={tp} dp={dp}")
    if hidden % heads or heads % tp:
        raise ValueError(f"hidden {hidden} must divide into {heads} heads, and the heads over tp={tp} devices")
    d, f, hd = hidden, 4 * hidden, hidden // heads
    dims = {"D": d, "F": f, "3D": 3 * d}
    stage_of = stage_of_layers(layers, stages)
    last = stages - 1
    micro = ("microbatch = 0",) if microbatch else ()
    axes = [n for n in (dp, tp) if n > 1] or [1]  # the mesh shape of a stage

    def nd(dp_part: str, tp_part: str | None) -> str | None:
        """An nd-SBP on a stage's mesh: the data-parallel axis's part, then the tensor-parallel one."""
        parts = ([dp_part] if dp > 1 else []) + ([tp_part or "B"] if tp > 1 else [])
        return ", ".join(parts) if parts and (dp > 1 or tp_part) else None

    def place(s: int) -> str:
        """The placement of an op or argument of stage s (stage 0 is the function's mesh)."""
        return f"mesh = @stage{s}" if s else ""

    def op_attrs(s: int, *extra: str) -> str:
        items = [e for e in (*extra, place(s)) if e]
        return " {" + ", ".join(items) + "}" if items else ""

    def arg(name: str, shape: tuple[int, ...], s: int, sbp: str | None = None, dtype: str = "f32",
            extra: tuple[str, ...] = ()) -> str:
        items = [e for e in ((f"sbp = [{sbp}]" if sbp else ""), place(s), *extra) if e]
        return f"%{name}: {_tt(shape, dtype)}" + (" {" + ", ".join(items) + "}" if items else "")

    args = [arg("tokens", (batch, seq), 0, nd("S(0)", None), dtype="i32", extra=micro)]
    if loss:
        args.append(arg("labels", (batch, seq), last, nd("S(0)", None), dtype="i32", extra=micro))
    train = ("trainable = true",) if trainable else ()
    args += [arg("wte", (vocab, d), 0, extra=train), arg("wpe", (seq, d), 0, extra=train)]
    for i, s in enumerate(stage_of):
        for name, shape, sbp in _BLOCK_PARAMS:
            args.append(arg(f"l{i}.{name}", tuple(dims[x] for x in shape.split("x")), s, nd("B", sbp), extra=train))
    args += [arg("lnf_g", (d,), last, extra=train), arg("lnf_b", (d,), last, extra=train),
             arg("w_head", (d, vocab), last, nd("B", "S(1)"), extra=train)]

    result = _tt(()) if loss else _tt((batch, seq, vocab))
    lines = [f"// GPT-2-style decoder: {layers} layers, hidden {d}, {heads} heads, seq {seq}, batch {batch}, "
             f"vocab {vocab}, {'causal' if causal else 'full (no mask)'} attention; {stages} pipeline stage(s) "
             + (f"of {tp}-way tensor parallelism" if dp == 1 else f"of {dp}-way data and {tp}-way tensor parallelism"),
             "// (generated by bench/gpt_model.py)"]
    per_stage = dp * tp
    shape = ", ".join(map(str, axes))
    lines += [f"sbp.mesh @stage{s} = [{shape}]"
              + (f" {{devices = [{', '.join(str(s * per_stage + k) for k in range(per_stage))}]}}" if s else "")
              for s in range(stages)]
    lines.append(f"func.func @gpt({', '.join(args)}) -> {result} attributes {{mesh = @stage0}} {{")
    emit = lines.append

    emit("  %tok_emb = flow.gather %wte, %tokens")
    emit("  %x0 = flow.add %tok_emb, %wpe")
    bsd = _tt((batch, seq, d))
    x = "%x0"
    for i, s in enumerate(stage_of):
        p = f"%l{i}."
        first_of_stage = i == 0 or stage_of[i - 1] != s
        if first_of_stage:
            emit(f"  // ---- stage {s}")
            emit(f"  %s{s}.scale = flow.fill{op_attrs(s, f'value = {1.0 / hd ** 0.5!r}')} : tensor<f32>")
            if causal:
                # -1e9 where key j > query i: relu(j - i) clipped at 1, times -1e9 (built once per stage).
                ss = _tt((seq, seq))
                emit(f"  %s{s}.row = flow.iota{op_attrs(s, 'axis = 0')} : {ss}")
                emit(f"  %s{s}.col = flow.iota{op_attrs(s, 'axis = 1')} : {ss}")
                emit(f"  %s{s}.ahead = flow.sub %s{s}.col, %s{s}.row{op_attrs(s)}")
                emit(f"  %s{s}.ahead_pos = flow.relu %s{s}.ahead{op_attrs(s)}")
                emit(f"  %s{s}.one = flow.fill{op_attrs(s, 'value = 1.0')} : tensor<f32>")
                emit(f"  %s{s}.future = flow.min %s{s}.ahead_pos, %s{s}.one{op_attrs(s)}")
                emit(f"  %s{s}.neg_big = flow.fill{op_attrs(s, 'value = -1e9')} : tensor<f32>")
                emit(f"  %s{s}.mask = flow.mul %s{s}.future, %s{s}.neg_big{op_attrs(s)}")
        emit(f"  // ---- layer {i}")

        def a(*extra: str, s: int = s) -> str:
            return op_attrs(s, *extra)

        # A stage's first layer takes the whole activation from the previous stage in both its users (a split
        # one would be cheaper to send, and the greedy sbp-infer would carry the split on).
        whole = (f"sbp = [{nd('S(0)', 'B') or 'B'}]",) if first_of_stage and s > 0 else ()
        emit(f"  {p}ln1 = flow.layernorm {x}, {p}ln1_g, {p}ln1_b{a(*whole)}")
        emit(f"  {p}qkv_mm = flow.matmul {p}ln1, {p}w_qkv{a()}")
        emit(f"  {p}qkv = flow.add {p}qkv_mm, {p}b_qkv{a()}")
        emit(f"  {p}qkv_h = flow.reshape {p}qkv{a()} : {_tt((batch, seq, heads, 3 * hd))}")
        emit(f"  {p}qkv_t = flow.transpose {p}qkv_h{a('perm = [0, 2, 1, 3]')}")
        for k, part in enumerate("qkv"):  # q, k, v: the k-th third of each head's 3*hd columns
            box = (f"start = [0, 0, 0, {k * hd}]", f"limit = [{batch}, {heads}, {seq}, {(k + 1) * hd}]")
            emit(f"  {p}{part} = flow.slice {p}qkv_t{a(*box)}")
        emit(f"  {p}qk = flow.matmul {p}q, {p}k{a('transpose_b = true')}")
        emit(f"  {p}scores_scaled = flow.mul {p}qk, %s{s}.scale{a()}")
        scores = f"{p}scores_scaled"
        if causal:
            emit(f"  {p}scores = flow.add {p}scores_scaled, %s{s}.mask{a()}")
            scores = f"{p}scores"
        emit(f"  {p}probs = flow.softmax {scores}{a()}")
        emit(f"  {p}ctx_h = flow.matmul {p}probs, {p}v{a()}")
        emit(f"  {p}ctx_t = flow.transpose {p}ctx_h{a('perm = [0, 2, 1, 3]')}")
        emit(f"  {p}ctx = flow.reshape {p}ctx_t{a()} : {bsd}")
        emit(f"  {p}attn_mm = flow.matmul {p}ctx, {p}w_o{a()}")
        reduced = f"sbp = [{nd('S(0)', 'B') or 'B'}]"  # after a row-parallel matmul: the one all-reduce
        emit(f"  {p}attn_out = flow.add {p}attn_mm, {p}b_o{a(reduced)}")
        emit(f"  {p}h = flow.add {x}, {p}attn_out{a(*whole)}")
        emit(f"  {p}ln2 = flow.layernorm {p}h, {p}ln2_g, {p}ln2_b{a()}")
        emit(f"  {p}fc_mm = flow.matmul {p}ln2, {p}w_fc{a()}")
        emit(f"  {p}fc = flow.add {p}fc_mm, {p}b_fc{a()}")
        emit(f"  {p}act = flow.gelu {p}fc{a(_TANH)}")
        emit(f"  {p}proj_mm = flow.matmul {p}act, {p}w_proj{a()}")
        emit(f"  {p}mlp_out = flow.add {p}proj_mm, {p}b_proj{a(reduced)}")
        emit(f"  {p}out = flow.add {p}h, {p}mlp_out{a()}")
        x = f"{p}out"
    emit("  // ---- head")
    emit(f"  %lnf = flow.layernorm {x}, %lnf_g, %lnf_b{op_attrs(last)}")
    emit(f"  %logits = flow.matmul %lnf, %w_head{op_attrs(last)}")
    if loss:
        emit(f"  %loss = flow.cross_entropy %logits, %labels{op_attrs(last)}")
        emit("  func.return %loss")
    else:
        emit("  func.return %logits")
    emit("}")
    return "\n".join(lines) + "\n"


__all__ = ["gpt_program", "stage_of_layers"]
