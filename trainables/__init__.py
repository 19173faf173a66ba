"""The science of noisy-transfer: label noise, label transforms, losses, metrics, data, models and the
Ray Tune trainables that combine them. Nothing here imports ``study`` or ``analysis``."""
