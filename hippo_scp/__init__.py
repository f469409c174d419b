"""hippo-scp: a DICOM Storage SCP that measures the hippocampus.

The package is laid out as the data flows through the node::

    network/receiver  ->  assembly (series store, selection)  ->  imaging (DICOM -> volume)
      ->  model (U-Net segmentation)  ->  pipeline (measurement, analysis)
      ->  outputs (SR / SEG / SC)  ->  network/outbox + sender  ->  PACS
"""

__version__ = "0.1.0"

#: Manufacturer written into every object the node creates; the node uses it (together with
#: :data:`SOFTWARE_NAME`) to recognise its own results when a PACS routes them back.
MANUFACTURER = "hippo-scp"
SOFTWARE_NAME = "hippo-scp"
