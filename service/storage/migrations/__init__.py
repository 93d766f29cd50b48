"""The evaluation store's schema migrations (alembic), run by :mod:`service.storage.migrate`.

``env.py`` runs them on the connection that :func:`service.storage.migrate.upgrade`
hands over, inside its transaction; ``versions/`` holds one module per revision.
A new revision: ``python -m service.storage revision "what changes"``.
"""
