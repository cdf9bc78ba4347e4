"""Figures: what a model predicts and what AllSpark does inside (paper Figures 5-7), training curves, evaluation."""
