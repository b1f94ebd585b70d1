"""ray-ganime: distributed training, evaluation and serving of anime image GANs on Ray."""

import os as _os

__version__ = "0.1.0"

# Ray 2.60 turns token auth on implicitly for a new local cluster and writes ~/.ray/auth_token; a
# process that decided otherwise (Ray reads the mode once, at import) then fails with InvalidAuthToken.
# Saying "token" explicitly, before anything imports ray, keeps the CLI, the jobs, `ray start` and
# `ray job submit` launched from here consistent. Joining a cluster ($RAY_ADDRESS) keeps its own setting.
if not _os.environ.get("RAY_ADDRESS"):
    _os.environ.setdefault("RAY_AUTH_MODE", "token")
