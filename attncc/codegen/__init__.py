"""Code generators: one package per target (tvm, triton), each printing the IR to source;
hoist.py and tiles.py are shared by both."""
