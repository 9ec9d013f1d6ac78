"""Real test sets read straight from $BITNETCNN_DATA with numpy (MNIST IDX files, cifar100.npz), for evaluations."""

import numpy as np
import torch

from conftest import require_real_data


def mnist_test(n=None):
    images = require_real_data("MNIST/raw/t10k-images-idx3-ubyte")
    labels = require_real_data("MNIST/raw/t10k-labels-idx1-ubyte")
    x = np.fromfile(images, np.uint8)[16:].reshape(-1, 1, 28, 28)
    y = np.fromfile(labels, np.uint8)[8:].astype(np.int64)
    return (x[:n], y[:n]) if n else (x, y)


def cifar100_test(n=None):
    with np.load(require_real_data("cifar100.npz")) as d:
        x, y = d["x_test"][:n] if n else d["x_test"], d["y_test"][:n] if n else d["y_test"]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


@torch.no_grad()
def accuracy(model, x, y, mean, std, batch=500):
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = (torch.from_numpy(x[i : i + batch]).float() / 255 - mean) / std
        correct += int((model(xb).argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)
