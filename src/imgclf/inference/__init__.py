"""Answering questions about images with a trained model: the preprocessing every model
carries, and the classifier that applies it."""
