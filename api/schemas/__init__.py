"""Pydantic request/response models (separate from the SQLAlchemy tables in core/models.py)."""
