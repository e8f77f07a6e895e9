"""Scoring a trained model: intervals, calibration, paired comparisons, the champion."""
