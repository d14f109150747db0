"""The benchmark (issue 6): the real bus, web and worker against the fake Ollama, timed with real WebSocket and HTTP
clients. Prints a table (p50/p99/max, counts, targets met or not) and writes the figures as JSON. Then the same
with three workers (issue 9): figures 1 to 6 again against the one-worker values, failover when the worker
answering is killed, and a stream of mixed actions that no two workers may answer twice (tests/bench/workers.py).

    bin/bench [--quick] [--json PATH]

Tokens are matched by text: the fake's replies are made of unique numbered tokens ("r3t00042 "), so every token a
client receives is paired with the moment the fake wrote it (time.time(): one clock for every process on the
machine), and a token missing, repeated or out of order is counted. The fake runs in a process of its own, so writing
10,000 tokens/s does not compete for this process's GIL with the clients being timed.
"""
