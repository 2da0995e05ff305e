"""What every gateway shares: config, layer, lifecycle, CLI, health. No protocol knowledge."""
