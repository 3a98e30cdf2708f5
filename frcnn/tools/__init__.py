"""Tools around the pipeline: the ablation study (plan, compare) and the anchor analysis."""
