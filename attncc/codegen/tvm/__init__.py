"""The TVM backend: TVMScript generated from the IR, compiled through LLVM for the host CPU."""
