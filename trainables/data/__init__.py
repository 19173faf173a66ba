"""Data sources. Every source returns the containers of :mod:`trainables.data.base`, so the trainables
never care whether images came from the embedded synthetic benchmark, VOC on disk or CIFAR on disk."""
