"""`cnx-keys bootstrap-admin`: the first admin key of a cluster, minted where the issuer runs.

The local stack writes its bootstrap key to a file at start; in a cluster the operator runs this once
in an issuer pod (`kubectl exec -it deploy/cnx-issuer -- cnx-keys bootstrap-admin`). It mints the key
straight into the issuer's store, its KeyCreated into the outbox (the running issuers' relays publish
it within a second), and gives the secret only to the operator's terminal or a 0600 file: never to
stdout when stdout is not a terminal, since a pod's stdout is its log.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.crypto import FieldCipher
from shared.db import create_engine
from shared.settings import Settings


async def bootstrap_admin(account: str, out: Path | None, settings: Settings | None = None) -> int:
    from services.issuer.app import write_secret_file
    from services.issuer.service import IssuerService
    from services.issuer.store import IssuerStore

    settings = settings or Settings()
    if out is None and not sys.stdout.isatty():
        print(
            "cnx-keys bootstrap-admin: stdout is not a terminal (it may be a log): "
            "run it with `kubectl exec -it`, or give --out FILE",
            file=sys.stderr,
        )
        return 2
    store = IssuerStore(create_engine(settings.database_url("issuer")))
    try:
        service = IssuerService(
            store,
            peppers=settings.pepper_values(),
            cipher=FieldCipher(settings.encryption_key_values()),
            default_expiry_days=settings.default_expiry_days,
        )
        secret = await service.bootstrap_admin(account)
    finally:
        await store.close()
    if secret is None:
        print(
            f"cnx-keys bootstrap-admin: account {account!r} already has keys; nothing made", file=sys.stderr
        )
        return 1
    if out is not None:
        write_secret_file(out, secret)
        print(f"bootstrap admin key of {account!r} written to {out} (mode 0600)", file=sys.stderr)
    else:
        print(secret)
        print("shown once: keep it in your secret store", file=sys.stderr)
    return 0
