"""The source writer both backends print kernels with: lines at an indentation depth, and
``with w.block():`` for a nested block."""
import contextlib


class SourceWriter:
    def __init__(self):
        self.lines = []
        self.depth = 0

    def __call__(self, line):
        self.lines.append("    " * self.depth + line)

    @contextlib.contextmanager
    def block(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
