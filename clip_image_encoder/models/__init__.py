"""Models: the backbones registry, the backends that run them (torch, ONNX, TorchScript), loading, devices, export."""
