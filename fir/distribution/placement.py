"""Reading and writing placement and SBP annotations on functions, arguments, results and ops.

Placement of an op is its own `mesh` attribute, else its function's; an argument's or result's is its own
`mesh` entry, else its function's. The passes sbp-infer, insert-boxing and partition all go through here.
"""

from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntegerAttr, ModuleOp, SymbolRefAttr, i64
from xdsl.dialects.func import FuncOp
from xdsl.ir import Attribute, Operation

from fir.syntax.diagnostics import FirError, loc_of
from fir.dialects.comm import CommOp
from fir.dialects.sbp import MESH, SBP, VALUE_ATTRS, MeshOp, meshes_of, nd_to_attr
from fir.distribution.sbp import Mesh, NdSbp


# Function attributes of a device program (written by partition); an SPMD program (spmd-partition) names the
# `devices` that run it instead of one `device`.
DEVICE = "device"
DEVICES = "devices"
OF = "of"
ARGS = "args"
RESULTS = "results"


def symbol_name(attr: Attribute | None) -> str | None:
    """The name in a flat SymbolRefAttr, or None."""
    if isinstance(attr, SymbolRefAttr):
        return attr.root_reference.data
    return None


def func_mesh(func: FuncOp) -> str | None:
    """The function's default placement."""
    return symbol_name(func.attributes.get(MESH))


def op_mesh(op: Operation, func: FuncOp) -> str | None:
    """Where an op runs: its own mesh, else its function's."""
    return symbol_name(op.attributes.get(MESH)) or func_mesh(func)


def _dicts(func: FuncOp, which: str, n: int) -> list[dict[str, Attribute]]:
    attr = getattr(func, which)
    if attr is None:
        return [{} for _ in range(n)]
    return [dict(d.data) for d in attr.data]


def arg_attrs(func: FuncOp) -> list[dict[str, Attribute]]:
    """Each argument's attribute dictionary (empty when none)."""
    return _dicts(func, "arg_attrs", len(func.function_type.inputs.data))


def res_attrs(func: FuncOp) -> list[dict[str, Attribute]]:
    """Each result's attribute dictionary (empty when none)."""
    return _dicts(func, "res_attrs", len(func.function_type.outputs.data))


def _store(dicts: list[dict[str, Attribute]]) -> ArrayAttr | None:
    if not any(dicts):
        return None
    return ArrayAttr([DictionaryAttr(d) for d in dicts])


def set_arg_attrs(func: FuncOp, dicts: list[dict[str, Attribute]]) -> None:
    """Replace the argument attribute dictionaries."""
    func.arg_attrs = _store(dicts)


def set_res_attrs(func: FuncOp, dicts: list[dict[str, Attribute]]) -> None:
    """Replace the result attribute dictionaries."""
    func.res_attrs = _store(dicts)


def value_sbp(d: dict[str, Attribute]) -> NdSbp | None:
    """The nd-SBP in an argument or result dictionary."""
    return VALUE_ATTRS[SBP].to_python(d[SBP]) if SBP in d else None


def value_mesh(d: dict[str, Attribute], func: FuncOp) -> str | None:
    """The placement in an argument or result dictionary, else the function's."""
    return symbol_name(d.get(MESH)) or func_mesh(func)


def layout_attrs(nd: NdSbp, mesh: str | None = None) -> dict[str, Attribute]:
    """A dictionary holding an nd-SBP (and a placement)."""
    out: dict[str, Attribute] = {SBP: nd_to_attr(nd)}
    if mesh is not None:
        out[MESH] = SymbolRefAttr(mesh)
    return out


def int_attr(v: int) -> IntegerAttr:
    """An i64 attribute."""
    return IntegerAttr(v, i64)


def int_value(op: Operation, name: str) -> int | None:
    """The integer discardable attribute `name` of an op or function (`device`, `offset`, ...), or None."""
    attr = op.attributes.get(name)
    return int(attr.value.data) if isinstance(attr, IntegerAttr) else None


def program_devices(func: FuncOp) -> list[int]:
    """The devices that run a program: an SPMD program's `devices`, a device program's `device`, else device 0."""
    if DEVICES in func.attributes:
        return [int(d) for d in func.attributes[DEVICES].get_values()]  # type: ignore[attr-defined]
    d = int_value(func, DEVICE)
    return [0 if d is None else d]


def format_devices(devices: list[int]) -> str:
    """A list of devices for a message: the first four, then an ellipsis."""
    return ", ".join(map(str, devices[:4])) + (", ..." if len(devices) > 4 else "")


def device_count(module: ModuleOp) -> int:
    """How many devices the module uses: one more than the highest device id of its meshes and device programs."""
    ids = [d for op in module.ops if isinstance(op, MeshOp) for d in op.mesh().devices]
    ids += [d for op in module.ops if isinstance(op, FuncOp) and (d := int_value(op, DEVICE)) is not None]
    return max(ids, default=0) + 1


def places(func: FuncOp) -> bool:
    """True when the function, one of its arguments or results, or one of its ops names a mesh (a comm op always
    does): the distribution passes transform it. Other functions stay single-device programs, and device programs
    (partition's output, marked `device = K`, or spmd-partition's, marked `devices`) are already distributed."""
    if DEVICE in func.attributes or DEVICES in func.attributes:
        return False
    if MESH in func.attributes:
        return True
    if any(MESH in d for d in (*arg_attrs(func), *res_attrs(func))):
        return True
    return any(MESH in op.attributes or isinstance(op, CommOp) for op in func.body.ops)


def placed_functions(module: ModuleOp) -> tuple[dict[str, Mesh], list[FuncOp]]:
    """The module's meshes and the functions the distribution passes transform (none without a mesh)."""
    meshes = meshes_of(module)
    if not meshes:
        return meshes, []
    return meshes, [f for f in module.ops if isinstance(f, FuncOp) and places(f)]


def comm_result_layout(op: CommOp, func: FuncOp) -> tuple[str, NdSbp]:
    """(mesh name, nd-SBP) of a logical comm op's result: its `to` on its target mesh. A partitioned comm op
    (with an `id`) belongs in a device program and is a located error here."""
    if op.is_local:
        raise FirError(f"'{op.name}' belongs in a device program (partition's output), not in the logical "
                       f"function @{func.sym_name.data}", loc_of(op.location))
    vals = op.attr_values()
    return vals.get("to_mesh", vals["mesh"]).name, vals["to"]


def lookup_mesh(meshes: dict[str, Mesh], name: str | None, what: str, where: Operation) -> Mesh:
    """The mesh of a placement, or a located error saying what has none."""
    if name is None:
        raise FirError(f"{what} has no placement: give the function `attributes {{mesh = @m}}` or {what} its "
                       "own `mesh`", loc_of(where.location))
    if name not in meshes:
        raise FirError(f"{what} is placed on unknown mesh @{name}", loc_of(where.location))
    return meshes[name]


