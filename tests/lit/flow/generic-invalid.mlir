// MLIR generic input runs the same verifier as .fir input: each failure is located at the op's own line.
// RUN: fir-opt %s --split-input-file --verify-diagnostics | filecheck %s

"builtin.module"() ({
  "func.func"() <{sym_name = "bad_add", function_type = (tensor<4x8xf32>) -> tensor<4x8xf32>}> ({
  ^bb0(%x: tensor<4x8xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 3]]:5: error: 'flow.add' op result type tensor<4x9xf32> does not match the inferred type tensor<4x8xf32>
    // CHECK-NEXT: %y = "flow.add"(%x, %x) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x9xf32>
    // CHECK-NEXT: ^
    %y = "flow.add"(%x, %x) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x9xf32>
    "func.return"(%x) : (tensor<4x8xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "add_dtypes", function_type = (tensor<4xf32>, tensor<4xf16>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>, %h: tensor<4xf16>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.add' op operand 1 has dtype f16 but operand 0 has f32 (convert with flow.cast)
    %y = "flow.add"(%x, %h) : (tensor<4xf32>, tensor<4xf16>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "missing_property", function_type = (tensor<4x8xf32>) -> tensor<4x8xf32>}> ({
  ^bb0(%x: tensor<4x8xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.softmax' op property 'axis' expected
    %y = "flow.softmax"(%x) : (tensor<4x8xf32>) -> tensor<4x8xf32>
    "func.return"(%y) : (tensor<4x8xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "axis_range", function_type = (tensor<4x8xf32>) -> tensor<4x8xf32>}> ({
  ^bb0(%x: tensor<4x8xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.softmax' op axis 5 is out of range for a tensor of rank 2
    %y = "flow.softmax"(%x) <{axis = 5 : i64}> : (tensor<4x8xf32>) -> tensor<4x8xf32>
    "func.return"(%y) : (tensor<4x8xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "property_kind", function_type = (tensor<4x8xf32>) -> tensor<4x8xf32>}> ({
  ^bb0(%x: tensor<4x8xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.softmax' op {{.*}}should be of base attribute integer
    %y = "flow.softmax"(%x) <{axis = 1.5 : f64}> : (tensor<4x8xf32>) -> tensor<4x8xf32>
    "func.return"(%y) : (tensor<4x8xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "bad_perm", function_type = (tensor<4x8xf32>) -> tensor<8x4xf32>}> ({
  ^bb0(%x: tensor<4x8xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.transpose' op perm [0, 0] is not a permutation of the 2 axes of 4x8
    %y = "flow.transpose"(%x) <{perm = array<i64: 0, 0>}> : (tensor<4x8xf32>) -> tensor<8x4xf32>
    "func.return"(%y) : (tensor<8x4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "operand_count", function_type = (tensor<4x8xf32>) -> tensor<4x8xf32>}> ({
  ^bb0(%x: tensor<4x8xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.matmul' op Expected 2 operands, but got 1
    %y = "flow.matmul"(%x) <{transpose_a = false, transpose_b = false}> : (tensor<4x8xf32>) -> tensor<4x8xf32>
    "func.return"(%y) : (tensor<4x8xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: function @i16: unsupported element type i16; fir has f32, f16, bf16, f64, i32, i64, i1
  "func.func"() <{sym_name = "i16", function_type = (tensor<4xi16>) -> tensor<4xi16>}> ({
  ^bb0(%x: tensor<4xi16>):
    %y = "flow.neg"(%x) : (tensor<4xi16>) -> tensor<4xi16>
    "func.return"(%y) : (tensor<4xi16>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "f16_inside", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.exp' op unsupported element type i16; fir has f32, f16, bf16, f64, i32, i64, i1
    %y = "flow.exp"(%x) : (tensor<4xf32>) -> tensor<4xi16>
    "func.return"(%x) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "constant_shape", function_type = () -> tensor<3xf32>}> ({
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.constant' op attribute 'value' has shape 2 but the result type has shape 3
    %k = "flow.constant"() <{value = dense<1.0> : tensor<2xf64>}> : () -> tensor<3xf32>
    "func.return"(%k) : (tensor<3xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A constant's value is stored as dense f64 (float results) or i64 (integer results); other storage is rejected
// rather than converted.
"builtin.module"() ({
  "func.func"() <{sym_name = "constant_storage", function_type = () -> tensor<2xf32>}> ({
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'flow.constant' op value must be stored as f64 (float results) or i64 (integer results), not f32
    %k = "flow.constant"() <{value = dense<[1.5, 2.7]> : tensor<2xf32>}> : () -> tensor<2xf32>
    "func.return"(%k) : (tensor<2xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "unregistered", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:{{[0-9]+}}: error: Operation flow.nosuch is not registered
    %y = "flow.nosuch"(%x) : (tensor<4xf32>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "foreign_op", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'builtin.unrealized_conversion_cast' cannot appear in a function body
    %y = "builtin.unrealized_conversion_cast"(%x) : (tensor<4xf32>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:3: error: 'builtin.unrealized_conversion_cast' cannot appear at module level (only func.func and sbp.mesh)
  "builtin.unrealized_conversion_cast"() : () -> ()
}) : () -> ()

// -----

"builtin.module"() ({
  "func.func"() <{sym_name = "return_types", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:5: error: 'func.return' op Expected arguments to have the same types as the function output types
    "func.return"(%x, %x) : (tensor<4xf32>, tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

// The use of an undefined value is reported at the use.
"builtin.module"() ({
  "func.func"() <{sym_name = "undefined", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    // CHECK: {{.*}}generic-invalid.mlir:[[# @LINE + 1]]:25: error: use of undefined value %z
    %y = "flow.add"(%x, %z) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()

// -----

// A well-formed chunk between failing ones still prints (in .fir syntax, the default target).
// CHECK: func.func @fine(%x: tensor<4xf32>) -> tensor<4xf32> {
// CHECK-NEXT:   %y = flow.exp %x : tensor<4xf32>
"builtin.module"() ({
  "func.func"() <{sym_name = "fine", function_type = (tensor<4xf32>) -> tensor<4xf32>}> ({
  ^bb0(%x: tensor<4xf32>):
    %y = "flow.exp"(%x) : (tensor<4xf32>) -> tensor<4xf32>
    "func.return"(%y) : (tensor<4xf32>) -> ()
  }) : () -> ()
}) : () -> ()
