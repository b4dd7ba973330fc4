"""Special token ids of the BERT uncased vocabulary (shared by MiniLM and the tiny model)."""

PAD_ID = 0
CLS_ID = 101
SEP_ID = 102
