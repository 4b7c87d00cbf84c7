"""The append-only, hash-chained log of everything ccm does."""

from ccm.audit.service import NewEvent, VerifyResult, append, append_many, batched, verify

__all__ = ["NewEvent", "VerifyResult", "append", "append_many", "batched", "verify"]
