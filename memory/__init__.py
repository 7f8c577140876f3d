"""longwatch.memory: what was seen, kept in Redis (chunk caches, vectors, records) and indexed by FAISS.

Import from the modules: chunk (ChunkCache), store (ChunkStore, open_store), index (IndexRegistry),
records (the errors, counters, spans), serialization, kvquant, redis_server (EmbeddedRedis).
"""
