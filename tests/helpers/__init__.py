"""What the tests share: test modules import these helpers, never each other.

``contract`` is the independent reading of the output contract and the comparisons with what
Kafka holds; ``kafka`` talks to the test brokers; ``cli`` runs the console script in a
subprocess; ``server`` runs the local Finazon-compatible server in the test; ``waiting`` waits
for conditions on the real clock; ``frames``, ``recording`` and ``metrics`` build test data;
``paths`` says where the project's files are.
"""
