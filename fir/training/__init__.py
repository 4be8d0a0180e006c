"""Training: reverse-mode automatic differentiation of flow programs (and, later, optimizers)."""
