"""Pruning: the sparsity pattern, the selection core, the method contract, one module per method, the
sequential layer loop. Importing this package loads nothing heavy (recipes import ``sparsity``)."""
