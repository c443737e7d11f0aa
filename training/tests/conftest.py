"""The tiny trained models of ``cytoseg.tests.tiny_models``, for the training app's job tests."""

from cytoseg.tests.tiny_models import cellpose_model, models_base, nnunet_model

__all__ = ["cellpose_model", "models_base", "nnunet_model"]
