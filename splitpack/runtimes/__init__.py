"""splitpack.runtimes: what runs a bundle on a device — backends (ONNX Runtime, LiteRT), the
device runtime, link and load emulation, verification and profiling. Never imports torch,
onnx-graphsurgeon or scikit-learn."""
