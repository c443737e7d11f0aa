"""The tiny trained models shared by the model-library tests (trained once per session)."""

from cytoseg.tests.tiny_models import cellpose_model, models_base, nnunet_model

__all__ = ["cellpose_model", "models_base", "nnunet_model"]
