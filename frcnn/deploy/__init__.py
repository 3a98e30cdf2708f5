"""Taking the trained model out of the repository: MLflow models and exported graphs."""
