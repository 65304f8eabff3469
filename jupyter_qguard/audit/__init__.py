"""The tamper-evident audit log: entries hashed into an RFC 6962 Merkle tree."""
