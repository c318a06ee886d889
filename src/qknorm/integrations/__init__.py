"""Integrations of the qknorm ops into model libraries.

* :mod:`qknorm.integrations.transformers` -- ``apply_qknorm(model)`` for Hugging Face
  ``transformers`` models.

Nothing here is imported by ``import qknorm``; each integration imports its library only
when called.
"""
