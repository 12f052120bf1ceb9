"""Weight and channel pruning: selection, masked and slim models."""
