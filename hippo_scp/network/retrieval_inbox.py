"""Instances a PACS sends the node because the node asked for them (C-MOVE to itself).

Why: many PACS retrieve only by C-MOVE, which makes the PACS open a *new* association to the
move destination -- here the node's own Storage SCP -- and C-STORE the instances there. The
prior lookup (:mod:`hippo_scp.network.prior_query`, ``priors.retrieve: move``) needs those
SRs back, but the receiver's normal path would file them in the series store, which ignores
the node's own outputs. So the lookup announces the series it is moving here
(:meth:`RetrievalInbox.expecting`) and the receiver offers every C-STORE to the inbox first
(:meth:`RetrievalInbox.claim`): an announced series is claimed and handed to the lookup;
everything else goes on to the store untouched.

The receiver's hot path pays one empty-dict check while no lookup waits; the instance is kept
as received (bytes) and parsed by the lookup, off the network thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydicom.dataset import Dataset

from hippo_scp.assembly.series_store import ReceivedInstance
from hippo_scp.pipeline.worker import decode_instance


class RetrievalInbox:
    """Series the node is retrieving by C-MOVE, and what has arrived for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: dict[str, list[ReceivedInstance]] = {}
        #: series UID -> the AE title that must store it (the PACS asked to move it)
        self._senders: dict[str, str] = {}

    @contextmanager
    def expecting(
        self, series_uid: str, from_ae_title: str
    ) -> Iterator[Callable[[], list[Dataset]]]:
        """Claim the instances of ``series_uid`` that ``from_ae_title`` (the PACS asked for
        the C-MOVE) stores while the block runs; the yielded function returns (parsed) what has
        arrived so far. Nothing is claimed after the block, nor from another calling AE."""
        with self._lock:
            self._expected[series_uid] = []
            self._senders[series_uid] = from_ae_title.strip()
        try:
            yield lambda: self._received(series_uid)
        finally:
            with self._lock:
                self._expected.pop(series_uid, None)
                self._senders.pop(series_uid, None)

    def _received(self, series_uid: str) -> list[Dataset]:
        with self._lock:
            arrived = list(self._expected.get(series_uid, ()))
        return [decode_instance(instance) for instance in arrived]

    def claim(
        self,
        series_uid: str,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax: str,
        data: Callable[[], bytes],
        calling_ae_title: str,
    ) -> bool:
        """Keep the instance if a lookup is waiting for its series from this calling AE
        (True: the receiver answers Success and files nothing); False: not ours, the receiver
        goes on as usual."""
        if not self._expected:  # the common case: no lookup in progress
            return False
        with self._lock:
            bucket = self._expected.get(series_uid)
            if bucket is None or self._senders.get(series_uid) != calling_ae_title.strip():
                return False
            bucket.append(
                ReceivedInstance(
                    sop_instance_uid=sop_instance_uid,
                    sop_class_uid=sop_class_uid,
                    transfer_syntax=transfer_syntax,
                    data=data(),
                    received_at=time.monotonic(),
                )
            )
        return True


__all__ = ["RetrievalInbox"]
