"""The code MLflow runs to rebuild the logged teacher (MLflow's "models from code": no pickle in
the model); the model itself is `loop.teacher_model.SelfEditWriter`."""

import mlflow.models

from loop.teacher_model import SelfEditWriter

mlflow.models.set_model(SelfEditWriter())
