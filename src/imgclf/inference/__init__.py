"""Answering questions about images with a trained model: preprocessing carried by the
model, the MLflow pyfunc wrapper the server runs, and loading any model a user names."""
