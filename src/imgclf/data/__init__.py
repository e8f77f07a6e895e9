"""Datasets, the preprocessed splits and the batch loader."""
