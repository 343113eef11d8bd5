"""The one line for a module given data of a task it does not learn (imported on that error)."""

from errors import DataError

MODULE_FOR_TASK = {  # the module to use instead, by the data's task
    "multiclass": "models.classifier.ImageClassifier",
    "multilabel": "models.classifier.ImageClassifier (task: multilabel)",
    "regression": "models.regressor.Regressor",
    "segmentation": "models.segmenter.Segmenter",
    "none": "a LightningModule of your own (task none has no targets to learn)",
}


def wrong_task(owner: str, task: str, serves: tuple[str, ...]) -> DataError:
    """A DataError: no traceback through jsonargparse to bury the advice."""
    use = MODULE_FOR_TASK.get(task)
    advice = f": use {use}" if use else f" (it serves {' and '.join(serves)})"
    return DataError(f"{owner} does not learn task {task!r}{advice}")
