// Fixed bug: MLIR input cut off inside a region gives the message " in block definition" (an xDSL message fragment,
// passed through as is): the diagnostic reads "error:  in block definition" and does not say what is wrong.
// RUN: not fir-opt %s 2>&1 | filecheck %s --strict-whitespace
// CHECK: error: {{[A-Za-z]}}
"builtin.module"() ({
  "func.func"() <{sym_name = "f", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
