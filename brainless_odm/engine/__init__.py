"""The engine: documents in memory, their indexes, flush, load, watch and merge. Imports no ``nats``."""
