"""The code of the MLflow model (MLflow's "models from code": the model folder holds this file,
not a pickle, and loading it runs this file, which needs transferkit installed)."""

import mlflow.models

from transferkit.exporting.pyfunc import ImageClassifier

mlflow.models.set_model(ImageClassifier())
