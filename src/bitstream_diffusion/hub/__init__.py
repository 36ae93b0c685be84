"""What the folders the package writes show on the Hugging Face Hub: the model card."""

from .model_card import (
    ARXIV_ID,
    CITATION,
    LIBRARY_NAME,
    NO_PACKAGE_MARKER,
    REPO_ID_VARIABLE,
    build_model_card,
    hub_dataset_id,
)

__all__ = [
    "ARXIV_ID",
    "CITATION",
    "LIBRARY_NAME",
    "NO_PACKAGE_MARKER",
    "REPO_ID_VARIABLE",
    "build_model_card",
    "hub_dataset_id",
]
