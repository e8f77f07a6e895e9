"""imgclf: train, tune and track PyTorch image classifiers with DVC, MLflow and Optuna."""

__version__ = "0.1.0"
