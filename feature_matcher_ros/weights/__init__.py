"""Shipped network weights (package data): ``sptd2_*.pt`` with their training records (``.json``, ``.md``)."""
