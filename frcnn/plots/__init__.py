"""Figures (matplotlib, headless Agg): boxes on images, the data report, evaluation plots."""
