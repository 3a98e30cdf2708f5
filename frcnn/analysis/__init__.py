"""Looking inside the detector: what one forward pass computed, stage by stage."""
