"""The module every logged teacher imports by name (`loop/teacher_model_code.py`, which MLflow
runs to rebuild it): the trained teacher as an MLflow pyfunc. The model lives in
`loop.tasks.squad.teacher_model`; this name stays so that teachers logged before and after
load alike."""

from loop.tasks.squad.teacher_model import SelfEditWriter

__all__ = ["SelfEditWriter"]
