// fir-opt reads MLIR generic syntax from a .mlir file and prints .fir by default; results keep their names,
// and default-valued properties are dropped from the .fir form.
// RUN: fir-opt %s | filecheck %s
// RUN: fir-opt %s -t mlir | filecheck %s --check-prefix=MLIR
// From stdin, the syntax is sniffed: generic MLIR starts with a quoted op name.
// RUN: fir-opt < %s | filecheck %s
// RUN: fir-opt - < %s | filecheck %s
// The generic form is a fixed point of -t mlir.
// RUN: fir-opt %s -t mlir > %t.1.mlir && fir-opt %t.1.mlir -t mlir > %t.2.mlir && diff %t.1.mlir %t.2.mlir
// Passes run on MLIR input too.
// RUN: fir-opt %s -p cse | filecheck %s --check-prefix=CSE

// CHECK-LABEL: func.func @attention(%q: tensor<2x16x64xf32>, %k: tensor<2x16x64xf32>) -> tensor<2x16x16xf32> {
// CHECK-NEXT:    %s = flow.matmul %q, %k {transpose_b = true} : tensor<2x16x16xf32>
// CHECK-NEXT:    %p = flow.softmax %s : tensor<2x16x16xf32>
// CHECK-NEXT:    %p2 = flow.softmax %s : tensor<2x16x16xf32>
// CHECK-NEXT:    %o = flow.add %p, %p2 : tensor<2x16x16xf32>
// CHECK-NEXT:    func.return %o : tensor<2x16x16xf32>
// CHECK-NEXT:  }

// MLIR: %s = "flow.matmul"(%q, %k) <{transpose_a = false, transpose_b = true}> : (tensor<2x16x64xf32>, tensor<2x16x64xf32>) -> tensor<2x16x16xf32>
// MLIR: %p = "flow.softmax"(%s) <{axis = -1 : i64}> : (tensor<2x16x16xf32>) -> tensor<2x16x16xf32>

// CSE:      %p = flow.softmax %s : tensor<2x16x16xf32>
// CSE-NEXT: %o = flow.add %p, %p : tensor<2x16x16xf32>
"builtin.module"() ({
  "func.func"() <{sym_name = "attention", function_type = (tensor<2x16x64xf32>, tensor<2x16x64xf32>) -> tensor<2x16x16xf32>}> ({
  ^bb0(%q: tensor<2x16x64xf32>, %k: tensor<2x16x64xf32>):
    %s = "flow.matmul"(%q, %k) <{transpose_a = false, transpose_b = true}> : (tensor<2x16x64xf32>, tensor<2x16x64xf32>) -> tensor<2x16x16xf32>
    %p = "flow.softmax"(%s) <{axis = -1 : i64}> : (tensor<2x16x16xf32>) -> tensor<2x16x16xf32>
    %p2 = "flow.softmax"(%s) <{axis = -1 : i64}> : (tensor<2x16x16xf32>) -> tensor<2x16x16xf32>
    %o = "flow.add"(%p, %p2) : (tensor<2x16x16xf32>, tensor<2x16x16xf32>) -> tensor<2x16x16xf32>
    "func.return"(%o) : (tensor<2x16x16xf32>) -> ()
  }) : () -> ()
}) : () -> ()
