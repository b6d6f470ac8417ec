"""Token stores: a cube's samples as stage-1 token ids, written beside the cube (``store``)."""
