// Absolute line numbers in split MLIR input too.
// RUN: fir-opt %s --split-input-file --verify-diagnostics | filecheck %s

"builtin.module"() ({
  "func.func"() <{sym_name = "ok", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "second", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: split-lines.mlir:[[# @LINE + 2]]:5: error: 'flow.exp' op result type tensor<5xf32> does not match the inferred type tensor<4xf32>
    // CHECK-NEXT: {{^}}    %y = "flow.exp"(%x) : (tensor<4xf32>) -> tensor<5xf32>{{$}}
    %y = "flow.exp"(%x) : (tensor<4xf32>) -> tensor<5xf32>
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "third", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // A parse error: the location is the bad token.
    // CHECK: split-lines.mlir:[[# @LINE + 1]]:{{[0-9]+}}: error: {{.*}}
    %y = "flow.exp"(%x) : (tensor<4xf32>) -> tensor<4xfoo>
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()
