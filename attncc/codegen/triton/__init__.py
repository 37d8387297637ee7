"""The Triton backend: Triton source generated from the IR, compiled for NVIDIA GPUs (or run by
Triton's interpreter on CPU tensors, for testing), and compiled ahead of time for sm_80 and
sm_90 without a GPU (aot.py)."""
