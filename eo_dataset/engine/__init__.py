"""The alignment engine, per sample: choose items in time (``select``), read them onto the sample's pixel grid
(``read``), put every modality of a shard of samples together with its masks (``align``), and write captions
(``captions``)."""
