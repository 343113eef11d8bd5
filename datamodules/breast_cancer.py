"""scikit-learn's breast-cancer table (569 rows, 30 numeric features, 2 classes) as a
DataFrame: the tabular example, shipped with scikit-learn so nothing is downloaded."""

from typing import Any

import pandas as pd

from datamodules.dataframe import DataFrameDataModule


def breast_cancer_frame() -> pd.DataFrame:
    """The 30 features plus a ``label`` column with the class names (malignant / benign)."""
    from sklearn.datasets import load_breast_cancer  # only this example needs sklearn

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    frame["label"] = bunch.target_names[bunch.target.to_numpy()]
    return frame


class BreastCancerDataModule(DataFrameDataModule):
    """Stratified 80/20 test split (fixed ``split_seed``), 10 % of the rest for validation,
    features standardised with training-split statistics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data=breast_cancer_frame(), **kwargs)
