"""RetrievalInbox: what a C-MOVE of the node's own brings back is claimed, nothing else."""

from __future__ import annotations

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from hippo_scp.config import NodeConfig
from hippo_scp.network.retrieval_inbox import RetrievalInbox
from hippo_scp.node import retrieval_inbox_for
from tests.dicom_factory import data_set_bytes, series_from_volume


def _offer(inbox: RetrievalInbox, ds, calling_ae_title: str = "PACS") -> bool:
    data = data_set_bytes(ds)
    return inbox.claim(
        str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax=ExplicitVRLittleEndian,
        data=lambda: data,
        calling_ae_title=calling_ae_title,
    )


def test_only_an_expected_series_is_claimed_and_only_while_expected() -> None:
    wanted = series_from_volume(np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3))
    routed = series_from_volume(np.ones((4, 5, 3), dtype=np.float32))
    inbox = RetrievalInbox()
    assert not _offer(inbox, wanted[0])  # no lookup waiting: the receiver goes on as usual
    with inbox.expecting(str(wanted[0].SeriesInstanceUID), "PACS") as received:
        assert not _offer(inbox, routed[0])  # another series: not ours
        assert not _offer(inbox, wanted[0], "INTRUDER")  # not from the PACS asked to move it
        assert all(_offer(inbox, ds) for ds in wanted)
        back = received()
    assert [ds.SOPInstanceUID for ds in back] == [ds.SOPInstanceUID for ds in wanted]
    assert back[0].PatientID == wanted[0].PatientID  # parsed, whole
    assert back[0].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not _offer(inbox, wanted[0])  # after the lookup: nothing is claimed any more


def test_the_node_shares_an_inbox_only_when_priors_retrieve_by_c_move() -> None:
    assert retrieval_inbox_for(NodeConfig()) is None  # priors off
    get = NodeConfig.model_validate({"priors": {"enabled": True}})
    assert retrieval_inbox_for(get) is None
    move = NodeConfig.model_validate({"priors": {"enabled": True, "retrieve": "move"}})
    assert isinstance(retrieval_inbox_for(move), RetrievalInbox)
