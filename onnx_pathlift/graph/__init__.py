"""What lifted graphs are built with: the graph builder, exact power-of-two exponents, error budget."""
