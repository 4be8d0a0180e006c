// Diagnostics of meshes and placement attributes that only the MLIR generic form can express.
// RUN: fir-opt %s --split-input-file --verify-diagnostics | filecheck %s

"builtin.module"() ({
  "sbp.mesh"() <{sym_name = "tp", shape = array<i64: 4>, devices = array<i64: 0, 1, 2, 3>}> : () -> ()
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: symbol @tp is already defined at line [[# @LINE - 1]]
  "func.func"() <{sym_name = "tp", function_type = () -> ()}> ({
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: 'sbp.mesh' op mesh axes must have at least one device, got [2, 0]
  "sbp.mesh"() <{sym_name = "tp", shape = array<i64: 2, 0>, devices = array<i64>}> : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: 'sbp.mesh' op device ids must be distinct, got [1, 1]
  "sbp.mesh"() <{sym_name = "tp", shape = array<i64: 2>, devices = array<i64: 1, 1>}> : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: 'sbp.mesh' op has no attribute 'note'
  "sbp.mesh"() <{sym_name = "tp", shape = array<i64: 2>, devices = array<i64: 0, 1>}> {note = 1 : i64} : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: mesh name "2d" is not a fir symbol ([A-Za-z_][A-Za-z0-9_$.-]*)
  "sbp.mesh"() <{sym_name = "2d", shape = array<i64: 2>, devices = array<i64: 0, 1>}> : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: unknown function attribute 'sbp' (known: mesh, device, devices, of, args, results, schedule, arena_size)
  "func.func"() <{sym_name = "f", function_type = () -> ()}> ({
    "func.return"() : () -> ()
  }) {sbp = [#sbp.B]} : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: function attribute 'device' expects a non-negative integer stored as i64, got 1 : i32
  "func.func"() <{sym_name = "f", function_type = () -> ()}> ({
    "func.return"() : () -> ()
  }) {device = 1 : i32} : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: function attribute 'mesh': expected a flat symbol reference, got "tp"
  "func.func"() <{sym_name = "f", function_type = () -> ()}> ({
    "func.return"() : () -> ()
  }) {mesh = "tp"} : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: arg_attrs has 2 entries but the function has 1 argument(s)
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> (), arg_attrs = [{}, {}]}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: res_attrs has 0 entries but the function has 1 result(s)
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> tensor<4xf32>, res_attrs = []}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: unknown argument attribute 'sbp_in' (known: sbp, mesh, microbatch, trainable)
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> (), arg_attrs = [{sbp_in = [[#sbp.B]]}]}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"() : () -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @f: result attribute 'sbp': expected an SBP (#sbp.S<i>, #sbp.B, #sbp.P<sum|max>), got 0 : i64
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> tensor<4xf32>, res_attrs = [{sbp = [0 : i64]}]}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.exp' op attribute 'sbp_cost' expects a non-negative integer stored as i64, got 3 : i32
    %y = "flow.exp"(%x) {sbp_cost = 3 : i32} : (tensor<4xf32>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

// Placement is checked in the generic form too; an argument has no position of its own, so the error is at
// its function.
"builtin.module"() ({
  "sbp.mesh"() <{sym_name = "tp", shape = array<i64: 4>, devices = array<i64: 0, 1, 2, 3>}> : () -> ()
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: argument %x of @f: sbp [B, B] cannot lay out a tensor of shape 4 on mesh @tp of shape [4]: it has 2 entries but the mesh has 1 axes
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> (), arg_attrs = [{sbp = [#sbp.B, #sbp.B]}]}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"() : () -> ()
  }) {mesh = @tp} : () -> ()
}) : () -> ()
