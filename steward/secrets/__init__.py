"""Keys and sealed secrets: the master key, provider keys, gateway keys."""
