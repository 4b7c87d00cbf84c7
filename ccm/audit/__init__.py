"""The append-only, hash-chained log of everything ccm does."""

from ccm.audit.service import VerifyResult, append, verify

__all__ = ["VerifyResult", "append", "verify"]
