"""Foundations every stage uses: crash-safe writes, clocks, data paths, class names, BLAS threads."""
