"""The multiclass check for a label column that holds a continuous quantity, never trained
silently as hundreds of classes; imported only when ``class_names`` are not given."""

import numpy as np
import pandas as pd

from datamodules.tasks import label_key, plain
from errors import DataError

# More distinct labels than this share of the rows (of at least MIN_ROWS_FOR_CLASS_CHECK) is a
# continuous target.
MAX_CLASS_SHARE = 0.5
MIN_ROWS_FOR_CLASS_CHECK = 20
# More distinct integers than this that are not class ids (from 0 or 1, covering at least half
# the range up to the largest) are a quantity: prices in $k, ages, years, counts with gaps.
MAX_INTEGERS_NOT_IDS = 20


def refuse_continuous_labels(source: str, labels: pd.Series) -> None:
    """Refuse fractional numbers, many integers that are not class ids, or nearly one class
    per row."""
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.notna().all():
        fractional = numbers[(numbers % 1) != 0]
        if len(fractional):
            raise DataError(f"{source}: label column {labels.name!r} holds non-integer "
                            f"numbers (e.g. {plain(fractional.iloc[0])!r}); for a "
                            "continuous target set task: regression")
        values = np.unique(numbers.to_numpy(dtype=np.int64))
        ids = values[0] in (0, 1) and 2 * len(values) >= values[-1] - values[0] + 1
        if len(values) > MAX_INTEGERS_NOT_IDS and not ids:
            raise DataError(f"{source}: label column {labels.name!r} holds {len(values)} "
                            f"different integers from {values[0]} to {values[-1]}, not "
                            "class ids counted from 0 or 1; for a quantity (a price, an "
                            "age, a count) set task: regression, for classes give "
                            "class_names")
    distinct = labels.map(label_key).nunique()
    if len(labels) >= MIN_ROWS_FOR_CLASS_CHECK and distinct > MAX_CLASS_SHARE * len(labels):
        raise DataError(f"{source}: label column {labels.name!r} has {distinct} classes in "
                        f"{len(labels)} rows, nearly one per row; for a continuous target "
                        "set task: regression (or give class_names to keep them as classes)")
