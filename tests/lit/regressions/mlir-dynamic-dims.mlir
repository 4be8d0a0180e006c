// Fixed bug: MLIR input with a dynamic dimension is accepted (the .fir parser rejects '?'), and fir-opt prints
// tensor<-9223372036854775808x8xf32>, which no fir tool can read back.
// RUN: not fir-opt %s 2>&1 | filecheck %s
// CHECK: mlir-dynamic-dims.mlir:{{[0-9]+}}:{{[0-9]+}}: error: {{.*}}dynamic
"builtin.module"() ({
  "func.func"() <{sym_name = "f", function_type = (tensor<?x8xf32>) -> tensor<?x8xf32>}> ({
  ^bb0(%x: tensor<?x8xf32>):
    %y = "flow.exp"(%x) : (tensor<?x8xf32>) -> tensor<?x8xf32>
    "func.return"(%y) : (tensor<?x8xf32>) -> ()
  }) : () -> ()
}) : () -> ()
