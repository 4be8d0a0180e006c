// Fixed bug: in MLIR input, the use of an undefined value is reported at the end of the input (with
// --split-input-file: on the next split marker line) instead of at the use.
// RUN: not fir-opt %s 2>&1 | filecheck %s
"builtin.module"() ({
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: mlir-undefined-value-location.mlir:[[# @LINE + 1]]:{{[0-9]+}}: error: {{.*}}%z
    %y = "flow.add"(%x, %z) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()
