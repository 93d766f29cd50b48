"""Revisions of the evaluation store's schema, oldest first (``r0001_...``)."""
