// -f picks the input syntax regardless of the file extension; without it, .mlir files are read as MLIR.
// RUN: not fir-opt %s -f fir 2>&1 | filecheck %s --check-prefix=ASFIR
// RUN: fir-opt %s -f mlir | filecheck %s
// RUN: fir-opt %s | filecheck %s

// ASFIR: frontend-flag.mlir:[[# @LINE + 4]]:1: error: unexpected '"builtin.module"', expected 'func.func' or 'module'

// CHECK: func.func @g(%x: tensor<3xf32>) -> tensor<3xf32> {
// CHECK-NEXT: %y = flow.sigmoid %x : tensor<3xf32>
"builtin.module"() ({
  "func.func"() <{sym_name = "g", function_type = (tensor<3xf32>) -> tensor<3xf32>}> ({
  ^bb0(%x: tensor<3xf32>):
    %y = "flow.sigmoid"(%x) : (tensor<3xf32>) -> tensor<3xf32>
    "func.return"(%y) : (tensor<3xf32>) -> ()
  }) : () -> ()
}) : () -> ()
