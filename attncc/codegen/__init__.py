"""Code generators: one package per target (tvm today), each printing the IR to source."""
