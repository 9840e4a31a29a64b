"""Stand-in for the omegaconf package: CompVis' UNetModel only checks isinstance(x, ListConfig)."""
