"""MLflow, one module per concern; nothing else in imgclf imports ``mlflow``."""
