"""The networks and how they are trained; no MLflow, no Optuna."""
