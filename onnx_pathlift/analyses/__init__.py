"""What is computed from lifted graphs: path-metrics, scores, Lipschitz bounds, rescaling, inspection."""
