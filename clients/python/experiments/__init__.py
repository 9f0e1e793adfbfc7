# SPDX-License-Identifier: MIT
"""The papers' experiments, run through curvd (`make reproduce`).

1. autoencoder: the deep autoencoder of Martens' thesis (§4.12, §6.13) and
   the K-FAC paper (§7) on Fashion-MNIST: SGD with Nesterov momentum (a
   learning-rate grid), Adam (torch), K-FAC block-diagonal and
   block-tridiagonal (adaptive), HF.
2. cnn: the BMA paper's small CNN (Table 1) on Fashion-MNIST: AdaGrad-diag,
   AdaGrad-full, AdaGrad-BMA, MBAG, Adam over the BMA paper's
   learning-rate grid, and K-FAC.

Run with /usr/bin/python3 -m experiments from clients/python (or with it
on PYTHONPATH); --help lists the flags. Outputs go to docs/results/: a CSV
per run, summary.json per experiment, PNG plots and README.md.
"""
