"""The dead-letter topic as operators use it: select records (``select``), replay them after a fix
(``replay``), from the command line (``cli``: `gateway dlq list|show|replay`)."""
