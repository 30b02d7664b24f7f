"""Runnable examples of bringing your own environment (README, "Your own environment")."""
