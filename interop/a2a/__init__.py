"""A2A conformance: the TCK scenario agent, the direct-vs-relayed TCK runner, the a2a-proof
contract and the JavaScript SDK client (README.md "A2A")."""
