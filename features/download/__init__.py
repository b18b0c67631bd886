"""Dataset downloads: fetching, verified writes, safe archives, dataset sources, manifests."""
