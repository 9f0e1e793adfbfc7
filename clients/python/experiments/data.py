# SPDX-License-Identifier: MIT
"""The experiments' data: Fashion-MNIST from Debian's dataset-fashion-mnist
(IDX files, gzipped), or a tiny generated stand-in of the same form for
the end-to-end test (no package needed)."""

import gzip
import os
import struct

import torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class Data:
    """Images [n, 1, side, side] in [0, 1] (float32) and labels [n]."""

    def __init__(self, name: str, train_x, train_y, test_x, test_y):
        self.name = name
        self.train_x, self.train_y = train_x, train_y
        self.test_x, self.test_y = test_x, test_y

    def subsample(self, n_train: int, n_test: int, seed: int = 0) -> "Data":
        """A fixed random subset of each split (all of it for n <= 0 or
        n larger than the split)."""
        g = torch.Generator().manual_seed(seed)

        def pick(x, y, n):
            if n <= 0 or n >= x.shape[0]:
                return x, y
            i = torch.randperm(x.shape[0], generator=g)[:n]
            return x[i], y[i]

        tx, ty = pick(self.train_x, self.train_y, n_train)
        sx, sy = pick(self.test_x, self.test_y, n_test)
        return Data(self.name, tx, ty, sx, sy)


def _read_idx(path: str) -> torch.Tensor:
    """An IDX file (the MNIST format): magic 0x0000 08 ndim, big-endian
    dims, unsigned bytes."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    n = 1
    for d in dims:
        n *= d
    if len(body) != n:
        raise ValueError(f"{path}: {len(body)} data bytes, the header says {n}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def fashion_mnist(folder: str = FASHION_DIR) -> Data:
    """Fashion-MNIST: 60000 training and 10000 test images, 28 x 28."""
    out = []
    for split in ("train", "test"):
        images, labels = (os.path.join(folder, f) for f in FILES[split])
        for p in (images, labels):
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p} is missing: install Debian's dataset-fashion-mnist "
                                        "(scripts/install-deps reproduce)")
        x = _read_idx(images).to(torch.float32).div_(255.0).unsqueeze(1)
        out += [x, _read_idx(labels).to(torch.int64)]
    return Data("Fashion-MNIST", *out)


def generated(n_train: int = 256, n_test: int = 128, side: int = 28, seed: int = 0) -> Data:
    """Ten classes of blurred bars at class-specific angles, in [0, 1]:
    learnable, image-like, and made in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.randint(0, 10, (n,), generator=g)
    r = torch.linspace(-1, 1, side)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    angle = y.to(torch.float32) * (torch.pi / 10) + 0.1 * torch.randn(n, generator=g)
    dist = (xx[None] * torch.sin(angle)[:, None, None] - yy[None] * torch.cos(angle)[:, None, None])
    x = torch.exp(-(dist / 0.25) ** 2) * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g))
    x = (x + 0.05 * torch.rand(n, side, side, generator=g)).clamp(0, 1).unsqueeze(1)
    return Data("generated", x[:n_train], y[:n_train], x[n_train:], y[n_train:])
