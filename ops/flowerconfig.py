"""Flower's configuration file: ``jobctl flower`` runs ``celery flower --conf=<this file>``.

Tornado executes this file inside the Flower process and applies every module-level name that
is a Flower option (so no other name here may be one). The credentials and the cookie secret
come from our settings (``JOBS_FLOWER_BASIC_AUTH``, ``JOBS_FLOWER_COOKIE_SECRET``) at this
point, never from Flower's command line, which every user can read in ``ps``. Without basic
auth it stops Flower with exit status 2 and says how to set it; running
``celery -A workers.app flower --conf=ops/flowerconfig.py`` by hand gets the same guard.
"""

from __future__ import annotations

from ops.cli.run import flower_secrets as _flower_secrets

_secrets = _flower_secrets()

basic_auth = _secrets.basic_auth
cookie_secret = _secrets.cookie_secret
