"""Pydantic request/response models (separate from the SQLAlchemy tables in core/models.py)."""

# Largest value of an INTEGER column on Postgres: a bigger one would be a database error, not a 422.
DB_INT_MAX = 2**31 - 1
