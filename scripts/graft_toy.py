"""Interim demo until `graftbench sweep` lands: SGD, Adam and their two grafts on the 8x8 digits.

Trains a small MLP with each of sgd, adam, adam#sgd (Adam's magnitude, SGD's direction) and
sgd#adam for 10 epochs on 1,437 images and prints test accuracy on the other 360.
"""

import torch
from sklearn.datasets import load_digits

from graftbench.optim import Graft

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 1e-3}


def run(magnitude: dict, direction: dict) -> float:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    train, test = order[:1437], order[1437:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = Graft(model.parameters(), magnitude, direction)
    for _ in range(10):
        for batch in train[torch.randperm(len(train), generator=generator)].split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        return (model(x[test]).argmax(1) == y[test]).float().mean().item()


if __name__ == "__main__":
    for m_name, m in (("sgd", SGD), ("adam", ADAM)):
        for d_name, d in (("sgd", SGD), ("adam", ADAM)):
            print(f"{m_name}#{d_name:5s} test accuracy {run(m, d):.3f}")
