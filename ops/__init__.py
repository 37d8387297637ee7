"""Ready-made attention families built on the DSL."""
