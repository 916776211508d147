"""fedai's Flower ServerApp: config -> aggregation scheme -> rounds -> results."""
