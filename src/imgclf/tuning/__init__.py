"""The Optuna study and the file that hands its winner to training."""
